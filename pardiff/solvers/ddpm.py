"""DDPM (Ho et al. 2020; Eq. 2 of SE2P), as diffusers' ``DDPMScheduler.step`` ("fixed_small").

    x_prev = μ̃(x_t, x̂_0) + √β̃ · z
Without clipping this is exactly Eq. 2, (x_t − β/√(1−ᾱ_t) ε) / √α + √β̃ z, for a jump
t -> t_prev with α = ᾱ_t/ᾱ_prev, β = 1 − α (posterior.py).
"""
from __future__ import annotations

from .base import Solver
from .posterior import cast, posterior_mean, posterior_variance, predict_x0


def step(x, eps, a, a_prev, noise, clip: float | None = None):
    """denoise(t, x_t, ε): one stochastic DDPM step (ᾱ_t = a, ᾱ_prev = a_prev) with N(0, I) noise."""
    x0 = predict_x0(x, eps, a, clip)
    return posterior_mean(x, x0, a, a_prev) + cast(posterior_variance(a, a_prev) ** 0.5, x) * noise


class DDPM(Solver):
    """DDPM jump sampling on the leading grid (SE2P App. C: N=10 -> 901, ..., 1)."""

    name = "ddpm"
    stochastic = True

    def step(self, x, eps, j, history=None, has_history=None, noise=None):
        j = self.rows(j, x)
        a, a_prev = self.abar(j, x), self.abar(j + 1, x)
        x0 = self.predict_x0(x, eps, j)
        return posterior_mean(x, x0, a, a_prev) + cast(posterior_variance(a, a_prev) ** 0.5, x) * noise, None
