"""Samplers shared by every algorithm: ``make_solver(name, schedule, steps, coeffs)``.

Grid solvers (one model evaluation per step, steppable for many points at once, usable as
ParaSolver's and ParaDiGMS's Φ): ddpm, ddim, dpmsolver, iia-ddim, iia-ddim-cfg,
iia-dpmsolver++. EDM-family samplers (Heun, two evaluations per step; sequential only):
edm, biia-edm, iia-edm. The iia-* / biia-* samplers need step sizes from ``pardiff fit-iia``.
"""
from .base import Solver
from .ddim import DDIM
from .ddpm import DDPM
from .dpmsolver import DPMSolverPP
from .edm import EDM, BIIAEDM, IIAEDM
from .iia import IIADDIM, IIADDIMCFG, IIADPMSolverPP

SOLVERS = {"ddpm": DDPM, "ddim": DDIM, "dpmsolver": DPMSolverPP, "edm": EDM,
           "iia-ddim": IIADDIM, "iia-ddim-cfg": IIADDIMCFG, "iia-dpmsolver++": IIADPMSolverPP,
           "biia-edm": BIIAEDM, "iia-edm": IIAEDM}
GRID_SOLVERS = ("ddpm", "ddim", "dpmsolver", "iia-ddim", "iia-ddim-cfg", "iia-dpmsolver++")
NEEDS_COEFFS = ("iia-ddim", "iia-ddim-cfg", "iia-dpmsolver++", "biia-edm", "iia-edm")


def make_solver(name: str, schedule, steps: int, coeffs=None):
    """The sampler ``name`` on ``steps`` steps; IIA samplers take their step sizes from ``coeffs``."""
    if name not in NEEDS_COEFFS:
        return SOLVERS[name](schedule, steps)
    if coeffs is None:
        raise ValueError(f"--sampler {name} needs step sizes: --coeffs FILE from pardiff fit-iia")
    if name in ("biia-edm", "iia-edm"):
        return SOLVERS[name](schedule, steps, coeffs.coefficients, history=coeffs.history)
    return SOLVERS[name](schedule, steps, coeffs.coefficients)


__all__ = ["Solver", "SOLVERS", "GRID_SOLVERS", "NEEDS_COEFFS", "make_solver"]
