"""Solver: a sequential sampler on its timestep grid, steppable for many points at once.

Grid point g = 0..S: point g < S sits at timestep ``timesteps[g]``; point S is the clean
end (ᾱ = ``final_alpha_bar``). Step j takes grid point j to j + 1 with one model
evaluation at ``timesteps[j]``. ``j`` may be an int or a tensor of one step index per
row, so that points at different steps advance as one batch (ParaSolver, ParaDiGMS);
a sequential run uses the same arithmetic, so both give the same numbers.

A step may need quantities of the step before it (a multistep solver's previous x̂_0,
IIA-DDIM's previous x̂_0 and ε): ``history``, a ``(rows, history_slots, C, H, W)`` tensor
that ``step`` returns for the next step. Rows without one (``has_history`` false: the
first step, or a point a parallel solver just initialised) take the step without it.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import seeds
from ..schedules import Schedule
from .posterior import cast, posterior_mean, posterior_variance, predict_x0


class Solver:
    name = ""
    stochastic = False          # draws N(0, I) noise at each step (DDPM)
    history_slots = 0           # quantities of the previous step a step needs
    clips = True                # x̂_0 is clamped where the model's scheduler clips (DDPM, DDIM)

    def __init__(self, schedule: Schedule, steps: int):
        self.schedule = schedule
        self.S = steps
        self.timesteps = self.make_timesteps()
        abar = [schedule.alpha_bar(t) for t in self.timesteps] + [self.final_alpha_bar()]
        self.alpha_bars = np.array(abar, dtype=np.float64)      # at grid points 0..S
        self._tables = {}

    def make_timesteps(self) -> list[int]:
        return self.schedule.timesteps(self.S, "leading")

    @property
    def grid(self) -> list[int]:
        """The timesteps the sampler's steps start from (what IIA step sizes are fitted on)."""
        return self.timesteps

    def final_alpha_bar(self) -> float:
        return 1.0

    # --- per-row coefficients --------------------------------------------------------
    def table(self, name: str, values, like: torch.Tensor) -> torch.Tensor:
        """A per-grid-point coefficient array as a float64 tensor on x's device (cached)."""
        key = (name, like.device)
        if key not in self._tables:
            self._tables[key] = torch.as_tensor(np.asarray(values, dtype=np.float64)).to(like.device)
        return self._tables[key]

    def rows(self, j, x: torch.Tensor) -> torch.Tensor:
        """Step indices as a (rows,) long tensor on x's device: one per row of x."""
        j = torch.as_tensor(j, dtype=torch.long).reshape(-1)
        if j.numel() == 1:
            j = j.expand(x.shape[0])
        # non_blocking: a blocking copy to the GPU waits for every queued kernel (a host sync per step)
        return j.to(x.device, non_blocking=True)

    def coef(self, name: str, values, j: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """values[j] per row (float64), shaped to broadcast against x."""
        return self.table(name, values, x)[j].reshape(-1, *[1] * (x.dim() - 1))

    def abar(self, g, x):
        return self.coef("abar", self.alpha_bars, self.rows(g, x), x)

    @staticmethod
    def masked(coefficient, has_history):
        """Zero a per-row coefficient on rows that have no history."""
        if has_history is None:
            return coefficient
        mask = has_history.to(coefficient.dtype).to(coefficient.device, non_blocking=True)
        return coefficient * mask.reshape(coefficient.shape)

    # --- the sampler ----------------------------------------------------------------
    def predict_x0(self, x, eps, j):
        """x̂_0 at grid point j from the model's ε."""
        clip = self.schedule.clip if self.clips else None
        return predict_x0(x, eps, self.abar(j, x), clip)

    def step(self, x, eps, j, history=None, has_history=None, noise=None):
        """Step j for every row: returns (x at grid point j + 1, the history for step j + 1)."""
        raise NotImplementedError

    def sample(self, ctx) -> torch.Tensor:
        """Sequential sampling on one rank: the S steps in order.

        The initial latent is stream INIT and DDPM's noise at step k (counting down,
        k = S-1 .. 0, as SE2P's loop does) is stream STEP, index k: the draws SE2P and the
        parallel solvers make, so that SE2P with γ = 1 and ParaSolver / ParaDiGMS with
        tolerance 0 return this sample.
        """
        x = ctx.noise(seeds.INIT)
        history = None
        for j, t in enumerate(self.timesteps):
            k = self.S - 1 - j
            eps = ctx.eps(x, t, line="SEQ:eps", step=k)
            with ctx.host("step", "SEQ:step", step=k):
                noise = ctx.noise(seeds.STEP, k) if self.stochastic else None
                x, history = self.step(x, eps, j, history, noise=noise)
        return x

    def bridge(self, x, x0, g_from, g_to, noise=None):
        """x at grid point g_to from x at g_from with x̂_0 held fixed: one first-order step
        over the jump (ParaSolver's q(X_{t_{n+1}} | X_{t_n}, X̂_clean), Eq. 15-17). DDPM samples
        the posterior with ``noise``; the deterministic samplers take the DDIM step."""
        a, a_to = self.abar(g_from, x), self.abar(g_to, x)
        if self.stochastic:
            return posterior_mean(x, x0, a, a_to) + cast(posterior_variance(a, a_to) ** 0.5, x) * noise
        eps = (x - cast(a ** 0.5, x) * x0) / cast((1 - a) ** 0.5, x)
        return cast(a_to ** 0.5, x) * x0 + cast((1 - a_to) ** 0.5, x) * eps

    def variance(self, g_from: int, g_to: int) -> float:
        """The DDPM posterior variance between two grid points: the noise scale σ² that
        ParaDiGMS's and ParaSolver's tolerance (Eq. 14) is measured against."""
        return float(posterior_variance(self.alpha_bars[g_from], self.alpha_bars[g_to]))
