"""One-step integrators Φ shared by every algorithm: ``make_solver(name, schedule, steps)``."""
from .base import Solver
from .ddim import DDIM
from .ddpm import DDPM
from .dpmsolver import DPMSolverPP

SOLVERS = {"ddpm": DDPM, "ddim": DDIM, "dpmsolver": DPMSolverPP}


def make_solver(name: str, schedule, steps: int) -> Solver:
    return SOLVERS[name](schedule, steps)


__all__ = ["Solver", "SOLVERS", "make_solver", "DDPM", "DDIM", "DPMSolverPP"]
