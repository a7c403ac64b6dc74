"""ParaDiGMS: Picard iterations over a sliding window of sampler steps.

Shih et al., "Parallel Sampling of Diffusion Models" (NeurIPS 2023), as diffusers'
``StableDiffusionParadigmsPipeline`` implements it: every sampler step is a point
(N = S), all points start at the initial noise, the window of p steps is evaluated as
one batch, each point is the window start plus the cumulative drift (and pre-drawn
noise) of the steps before it, and the window slides to the first point that moved
more than the tolerance; the points entering the window copy the last updated point.
Trace labels: PD:init, PD:eval, PD:picard, PD:tolerance, PD:slide, PD:return.
"""
from __future__ import annotations

import torch

from .. import seeds
from ..solvers import make_solver
from .window import Window

LINES = {"init": "PD:init", "eval": "PD:eval", "delta": "PD:picard", "drift": "PD:picard", "stride": "PD:tolerance",
         "new": "PD:slide", "ret": "PD:return"}


def paradigms(ctx) -> torch.Tensor | None:
    """ParaDiGMS (Shih et al. 2023), the window spread over the ranks."""
    cfg, comm = ctx.cfg, ctx.comm
    solver = make_solver(cfg.sampler, ctx.schedule, cfg.steps, ctx.coeffs)
    win = Window(ctx, solver, solver.S, cfg.window, LINES)
    N, p = win.N, win.p_max

    # Every point starts as the initial noise x_0 (drawn on rank 0, one copy to each owner).
    win.scatter_copies(range(p + 1), ctx.noise(seeds.INIT) if comm.rank == 0 else None, 0, LINES["init"], -1)

    n, k = 0, 0
    iterations = []
    while n < N:
        delta, _, _, history = win.solve_subproblems(n, p, k, clean=False)   # drifts of the window's steps, one batch
        new, end = win.cumulative_update(n, p, delta, history, k)   # x_{i+1} = x_n + Σ drift (+ noise)
        f = win.first_unconverged(n, p, new, cfg.tol, k)            # ‖Δx‖²/D ≤ τ² σ² up to f
        win.commit(new)
        s, p_next = f - n, min(win.p_max, N - f)
        fresh = range(n + p + 1, f + p_next + 1)
        maker = win.owner(n + p - 1)
        win.scatter_copies(fresh, end[0] if comm.rank == maker else None, maker, LINES["new"], k)  # copy x_{n+p}
        iterations.append({"iter": k, "begin": n, "window": p, "stride": s, "nfe": p})
        n, k, p = f, k + 1, p_next
        win.drop_before(n)

    win.report(iterations)
    return win.result(LINES["ret"], k)
