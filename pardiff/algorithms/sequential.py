"""The one-proc baseline: a sampler's steps in order (SE2P's baseline; what ParaSolver accelerates)."""
from __future__ import annotations

import torch

from .. import seeds
from ..solvers import make_solver


def sequential(ctx) -> torch.Tensor:
    """Sequential sampling with ``--sampler`` ddpm | ddim | dpmsolver on one rank.

    The initial latent is stream INIT and DDPM's noise at step k (counting down,
    k = S-1 .. 0, as SE2P's loop does) is stream STEP, index k: the draws SE2P and the
    parallel solvers make, so that SE2P with γ = 1 and ParaSolver / ParaDiGMS with
    tolerance 0 return this sample.
    """
    solver = make_solver(ctx.cfg.sampler, ctx.schedule, ctx.cfg.steps)
    S = solver.S
    x = ctx.noise(seeds.INIT)
    x0_prev = None                       # the previous step's x̂_0 (multistep solvers)
    for j, t in enumerate(solver.timesteps):
        k = S - 1 - j
        eps = ctx.eps(x, t, line="SEQ:eps", step=k)
        with ctx.host("step", "SEQ:step", step=k):
            noise = ctx.noise(seeds.STEP, k) if solver.stochastic else None
            x, x0_prev = solver.step(x, eps, j, history=x0_prev if solver.uses_history else None, noise=noise)
    return x
