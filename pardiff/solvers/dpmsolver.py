"""DPM-Solver++ (2M), as diffusers' ``DPMSolverMultistepScheduler`` defaults.

Data prediction, second order with the midpoint rule, first order at the first and the
final step (``lower_order_final``), final σ = 0, "linspace" timesteps. With
α_t = √ᾱ_t, σ_t = √(1−ᾱ_t), λ_t = log(α_t/σ_t), h = λ_t − λ_s (Lu et al. 2022b, Alg. 2):
    x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D0 − ½ α_t (e^{−h} − 1) D1,
    D0 = x̂_0(s),  D1 = (x̂_0(s) − x̂_0(s_prev)) / r,  r = (λ_s − λ_{s_prev}) / h.
"""
from __future__ import annotations

import math

import numpy as np

from .base import Solver
from .posterior import cast


def _lam(a: float) -> float:
    return math.inf if a >= 1 else 0.5 * math.log(a / (1 - a))


def dpmpp_coefficients(a_prev: float | None, a: float, a_next: float) -> tuple[float, float, float]:
    """(c_x, c_d0, c_d1) of x_t = c_x x_s + c_d0 x̂_0(s) + c_d1 (x̂_0(s) − x̂_0(s_prev)) for ᾱ at
    s_prev, s, t. ``a_prev`` None: first order (c_d1 = 0); ᾱ_t = 1: the final step, x̂_0."""
    lam, lam_next = _lam(a), _lam(a_next)
    phi = math.expm1(-(lam_next - lam))                  # e^{−h} − 1 (−1 at the clean end)
    c_x = math.sqrt(1 - a_next) / math.sqrt(1 - a)
    c_d0 = -math.sqrt(a_next) * phi
    c_d1 = 0.0
    if a_prev is not None and a_next < 1:
        r = (lam - _lam(a_prev)) / (lam_next - lam)
        c_d1 = -0.5 * math.sqrt(a_next) * phi / r
    return c_x, c_d0, c_d1


class DPMSolverPP(Solver):
    name = "dpmsolver"
    history_slots = 1           # the previous step's x̂_0
    clips = False

    def __init__(self, schedule, steps):
        super().__init__(schedule, steps)
        a = self.alpha_bars
        # second order in between; first order at the first and the final step
        coefs = [dpmpp_coefficients(a[j - 1] if 0 < j < steps - 1 else None, a[j], a[j + 1])
                 for j in range(steps)]
        self.c_x, self.c_d0, self.c_d1 = (np.array(c) for c in zip(*coefs))

    def make_timesteps(self) -> list[int]:
        T = self.schedule.T
        ts = np.linspace(0, T - 1, self.S + 1).round()[::-1][:-1].astype(np.int64)
        return [int(t) for t in ts]

    def step(self, x, eps, j, history=None, has_history=None, noise=None):
        j = self.rows(j, x)
        x0 = self.predict_x0(x, eps, j)
        out = cast(self.coef("c_x", self.c_x, j, x), x) * x + cast(self.coef("c_d0", self.c_d0, j, x), x) * x0
        if history is not None:
            d1 = self.masked(self.coef("c_d1", self.c_d1, j, x), has_history)
            out = out + cast(d1, x) * (x0 - history[:, 0])
        return out, x0.unsqueeze(1)
