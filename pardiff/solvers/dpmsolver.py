"""DPM-Solver++ (2M), as diffusers' ``DPMSolverMultistepScheduler`` defaults.

Data prediction, second order with the midpoint rule, first order at the first and the
final step (``lower_order_final``), final σ = 0, "linspace" timesteps. With
α_t = √ᾱ_t, σ_t = √(1−ᾱ_t), λ_t = log(α_t/σ_t), h = λ_t − λ_s (Lu et al. 2022b, Alg. 2):
    x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D0 − ½ α_t (e^{−h} − 1) D1,
    D0 = x̂_0(s),  D1 = (x̂_0(s) − x̂_0(s_prev)) / r,  r = (λ_s − λ_{s_prev}) / h.
"""
from __future__ import annotations

import numpy as np

from .base import Solver
from .posterior import cast


class DPMSolverPP(Solver):
    name = "dpmsolver"
    uses_history = True
    clips = False

    def __init__(self, schedule, steps):
        super().__init__(schedule, steps)
        a = self.alpha_bars
        alpha, sigma = np.sqrt(a), np.sqrt(1 - a)
        with np.errstate(divide="ignore"):
            lam = np.log(alpha) - np.log(sigma)            # +inf at the clean end (σ = 0)
        S = self.S
        self.c_x = np.zeros(S)                             # multiplies x_s
        self.c_d0 = np.zeros(S)                            # multiplies x̂_0(s)
        self.c_d1 = np.zeros(S)                            # multiplies x̂_0(s) − x̂_0(s_prev)
        for j in range(S):
            phi = np.expm1(-(lam[j + 1] - lam[j]))         # e^{−h} − 1 (−1 at the final step)
            self.c_x[j] = sigma[j + 1] / sigma[j]
            self.c_d0[j] = -alpha[j + 1] * phi
            if 0 < j < S - 1:                              # second order in between
                r = (lam[j] - lam[j - 1]) / (lam[j + 1] - lam[j])
                self.c_d1[j] = -0.5 * alpha[j + 1] * phi / r

    def make_timesteps(self) -> list[int]:
        T = self.schedule.T
        ts = np.linspace(0, T - 1, self.S + 1).round()[::-1][:-1].astype(np.int64)
        return [int(t) for t in ts]

    def step(self, x, eps, j, history=None, has_history=None, noise=None):
        j = self.rows(j, x)
        x0 = self.predict_x0(x, eps, j)
        out = cast(self.coef("c_x", self.c_x, j, x), x) * x + cast(self.coef("c_d0", self.c_d0, j, x), x) * x0
        if history is not None:
            d1 = self.coef("c_d1", self.c_d1, j, x)
            if has_history is not None:                    # rows without a previous x̂_0: first order
                d1 = d1 * has_history.to(d1.device, d1.dtype).reshape(d1.shape)
            out = out + cast(d1, x) * (x0 - history)
        return out, x0
