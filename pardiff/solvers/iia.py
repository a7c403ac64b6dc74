"""IIA samplers on a timestep grid (Zhang, Niwa & Kleijn, ICLR 2024): a base step plus fitted
step sizes φ_iq in front of chosen quantities Q_q,

    z_{i+1} = base(z_i) + Σ_q φ_iq Q_q(i),

with φ fitted once per model and grid by ``pardiff fit-iia`` (algorithms/iia_fit.py). Zero
step sizes give the base sampler. ``base_and_quantities`` is the one place each variant's
terms are formed, for sampling and for fitting alike.
"""
from __future__ import annotations

import numpy as np
import torch

from .ddim import DDIM, ddim_step
from .dpmsolver import DPMSolverPP
from .posterior import cast


class IIA:
    """The step-size part shared by the IIA samplers."""

    first_fitted_step = 1       # the paper fits i = 1 .. N-1: step 0 has no previous quantities

    @property
    def fitted_steps(self) -> range:
        return range(self.first_fitted_step, self.S)

    def set_step_sizes(self, phi) -> None:
        """φ: (steps, quantities)."""
        self.phi = np.array(phi, dtype=np.float64)
        self._tables = {k: v for k, v in self._tables.items() if not k[0].startswith("phi")}

    def set_step_size(self, i: int, phi) -> None:
        """φ_i of one step (fit-iia fits them in order)."""
        phi_all = self.phi.copy()
        phi_all[i] = phi
        self.set_step_sizes(phi_all)

    def step(self, x, eps, j, history=None, has_history=None, noise=None):
        j = self.rows(j, x)
        base, quantities, history_next = self.base_and_quantities(x, eps, j, history, has_history)
        out = base
        for q, quantity in enumerate(quantities):
            phi = self.coef(f"phi{q}", self.phi[:, q], j, x)
            if self.quantities_need_history:
                phi = self.masked(phi, has_history)
            out = out + cast(phi, x) * quantity
        return out, history_next


class IIADDIM(IIA, DDIM):
    """IIA-DDIM, Eq. 6 (two quantities) and Eq. 25 (one):
    z_{i+1} = DDIM(z_i) + φ_i0 (x̂_i − x̂_{i−1}) [+ φ_i1 (ε_i − ε_{i−1})]; none at the first step."""

    name = "iia-ddim"
    quantities_need_history = True

    def __init__(self, schedule, steps, phi):
        super().__init__(schedule, steps)
        self.set_step_sizes(phi)
        self.history_slots = self.phi.shape[1]           # x̂ (and ε) of the previous step

    def base_and_quantities(self, x, eps, j, history=None, has_history=None):
        x0 = self.predict_x0(x, eps, j)
        base = ddim_step(x0, eps, self.abar(j + 1, x), x)
        current = [x0, eps][:self.history_slots]
        quantities = [] if history is None else [c - history[:, s] for s, c in enumerate(current)]
        return base, quantities, torch.stack(current, 1)


class IIADDIMCFG(IIA, DDIM):
    """IIA-DDIM for classifier-free guidance, Eq. 8: z_{i+1} = DDIM(z_i; ε̈_i) + β_i ε̈_i, with ε̈ the
    guided noise the model call returns (run with --guidance)."""

    name = "iia-ddim-cfg"
    quantities_need_history = False
    first_fitted_step = 0       # ε̈_i exists at every step

    def __init__(self, schedule, steps, phi):
        super().__init__(schedule, steps)
        self.set_step_sizes(phi)

    def base_and_quantities(self, x, eps, j, history=None, has_history=None):
        base, _ = DDIM.step(self, x, eps, j)
        return base, [eps], None


class IIADPMSolverPP(IIA, DPMSolverPP):
    """IIA-DPM-Solver++, App. C Eq. 23: z_{i+1} = DPM-Solver++(z_i, {x̂_{i−1}, x̂_i}) + φ_i0 z_i + φ_i1 x̂_i
    (step sizes fitted for i ≥ 1; zero at the first step)."""

    name = "iia-dpmsolver++"
    quantities_need_history = False

    def __init__(self, schedule, steps, phi):
        super().__init__(schedule, steps)
        self.set_step_sizes(phi)

    def base_and_quantities(self, x, eps, j, history=None, has_history=None):
        base, history_next = DPMSolverPP.step(self, x, eps, j, history, has_history)
        return base, [x, history_next[:, 0]], history_next
