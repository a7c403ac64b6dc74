"""The Gaussian posterior q(x_prev | x_t, x_0) of the DDPM forward process (Ho et al. 2020).

    x̂_0 = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t                                 (Eq. 15)
    μ̃   = √ᾱ_prev β / (1−ᾱ_t) · x̂_0 + √α (1−ᾱ_prev) / (1−ᾱ_t) · x_t    (Eq. 7)
    β̃   = (1−ᾱ_prev) / (1−ᾱ_t) · β
with α = ᾱ_t / ᾱ_prev and β = 1 − α for a jump t -> t_prev (ᾱ_prev = 1 below t = 0).
``a`` and ``a_prev`` (ᾱ_t, ᾱ_prev) are floats, or tensors broadcastable against x (one per
row) when points at different timesteps are handled as one batch.
"""
from __future__ import annotations

import torch


def cast(coefficient, x):
    """A coefficient computed in float64, in x's dtype: a tensor coefficient (one per row)
    then multiplies exactly like a Python float does, so batched and scalar paths agree."""
    return coefficient.to(x.dtype) if isinstance(coefficient, torch.Tensor) else coefficient


def predict_x0(x, eps, a, clip: float | None = None):
    """x̂_0 from x_t and ε, clamped to ±clip where the model's scheduler clips."""
    x0 = (x - cast((1 - a) ** 0.5, x) * eps) / cast(a ** 0.5, x)
    return x0 if clip is None else x0.clamp(-clip, clip)


def posterior_mean(x, x0, a, a_prev):
    """μ̃(x_t, x̂_0)."""
    alpha = a / a_prev
    return (cast(a_prev ** 0.5 * (1 - alpha) / (1 - a), x) * x0
            + cast(alpha ** 0.5 * (1 - a_prev) / (1 - a), x) * x)


def posterior_variance(a, a_prev):
    """β̃; 0 when ᾱ_prev = 1."""
    return (1 - a_prev) / (1 - a) * (1 - a / a_prev)
