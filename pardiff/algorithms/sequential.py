"""The one-proc baseline: a sampler's steps in order (SE2P's baseline; what ParaSolver accelerates)."""
from __future__ import annotations

import torch

from ..solvers import make_solver


def sequential(ctx) -> torch.Tensor:
    """Sequential sampling with ``--sampler`` on one rank (``Solver.sample``)."""
    return make_solver(ctx.cfg.sampler, ctx.schedule, ctx.cfg.steps, ctx.coeffs).sample(ctx)
