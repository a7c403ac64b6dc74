"""The DDPM step (Ho et al. 2020, Eq. 2 of SE2P), for any jump t -> t_prev.

Written with x̂_0 like diffusers' ``DDPMScheduler.step`` (variance "fixed_small"):
    x̂_0   = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t                 (clipped if the model's scheduler clips)
    μ̃     = √ᾱ_prev β / (1−ᾱ_t) · x̂_0 + √α (1−ᾱ_prev) / (1−ᾱ_t) · x_t
    x_prev = μ̃ + √β̃ · z,   β̃ = (1−ᾱ_prev) / (1−ᾱ_t) · β
where α = ᾱ_t / ᾱ_prev and β = 1 − α are the jump's own coefficients, and
ᾱ_prev = 1 below t = 0. Without clipping, μ̃ is exactly Eq. 2's mean
(x_t − β/√(1−ᾱ_t) ε) / √α.
"""
from __future__ import annotations

import math

import torch

from ..schedules import Schedule


def predict_x0(sched: Schedule, x: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
    """x̂_0 from x_t and ε (Ho et al. Eq. 15), clipped like the model's scheduler."""
    a = sched.alpha_bar(t)
    x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
    if sched.clip_sample:
        x0 = x0.clamp(-sched.clip_sample_range, sched.clip_sample_range)
    return x0


def posterior_mean(sched: Schedule, x: torch.Tensor, x0: torch.Tensor, t: int, t_prev: int) -> torch.Tensor:
    """μ̃(x_t, x̂_0) of q(x_prev | x_t, x_0) (Ho et al. Eq. 7, for a jump t -> t_prev)."""
    a, a_prev = sched.alpha_bar(t), sched.alpha_bar(t_prev)
    alpha = a / a_prev
    return (math.sqrt(a_prev) * (1 - alpha) / (1 - a)) * x0 + (math.sqrt(alpha) * (1 - a_prev) / (1 - a)) * x


def posterior_variance(sched: Schedule, t: int, t_prev: int) -> float:
    """β̃ = (1−ᾱ_prev) / (1−ᾱ_t) · (1 − ᾱ_t/ᾱ_prev); 0 when t_prev < 0."""
    a, a_prev = sched.alpha_bar(t), sched.alpha_bar(t_prev)
    return (1 - a_prev) / (1 - a) * (1 - a / a_prev)


def step(sched: Schedule, x: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int,
         noise: torch.Tensor) -> torch.Tensor:
    """denoise(t, x_t, ε): one stochastic DDPM step from t to t_prev with the given N(0, I) noise."""
    x0 = predict_x0(sched, x, eps, t)
    return posterior_mean(sched, x, x0, t, t_prev) + math.sqrt(posterior_variance(sched, t, t_prev)) * noise
