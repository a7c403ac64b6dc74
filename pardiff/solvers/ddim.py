"""DDIM with η = 0 (Song et al. 2021), as diffusers' ``DDIMScheduler.step``."""
from __future__ import annotations

from .base import Solver
from .posterior import cast


def ddim_step(x0, eps, a_next, x):
    """x_next = √ᾱ_next x̂_0 + √(1−ᾱ_next) ε (``x`` gives the dtype)."""
    return cast(a_next ** 0.5, x) * x0 + cast((1 - a_next) ** 0.5, x) * eps


class DDIM(Solver):
    """Leading timesteps; ᾱ = 1 past the end (``set_alpha_to_one``) unless the model's
    scheduler says otherwise."""

    name = "ddim"

    def final_alpha_bar(self) -> float:
        return 1.0 if self.schedule.set_alpha_to_one else self.schedule.alpha_bar(0)

    def step(self, x, eps, j, history=None, has_history=None, noise=None):
        j = self.rows(j, x)
        x0 = self.predict_x0(x, eps, j)
        return ddim_step(x0, eps, self.abar(j + 1, x), x), None
