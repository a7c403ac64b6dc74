"""ParaSolver: hierarchical parallel sampling through banded nonlinear equations.

Lu et al., "ParaSolver: A Hierarchical Parallel Integral Solver for Diffusion Models"
(ICLR 2025), Algorithm 1. The S sampler steps are cut into N subintervals of L = S/N
steps; point n (n = 0 .. N) sits at the start of subinterval n, point N is the sample.
Trace labels carry the pseudocode line (PS-A1:4) and, for messages, the equation they
move (PS-A1:6/Eq.13). docs/algorithms/parasolver.md maps every line and reading.
"""
from __future__ import annotations

import torch

from .. import seeds
from ..solvers import make_solver
from .window import Window

LINES = {"init": "PS-A1:1/Eq.17", "eval": "PS-A1:4", "delta": "PS-A1:5", "drift": "PS-A1:6/Eq.13", "stride": "PS-A1:7/Eq.14",
         "new": "PS-A1:9/Eq.15", "ret": "PS-A1:ret"}


def parasolver(ctx) -> torch.Tensor | None:
    """ParaSolver, Algorithm 1 of Lu et al. (2025), the window spread over the ranks."""
    cfg, comm = ctx.cfg, ctx.comm
    solver = make_solver(cfg.sampler, ctx.schedule, cfg.steps, ctx.coeffs)
    win = Window(ctx, solver, cfg.subintervals or solver.S, cfg.window, LINES)
    N, p = win.N, win.p_max

    # Line 1: initial points 0 .. p by M preconditioning steps (Eq. 15-17), made on rank 0;
    # M = 0 initialises every point with the noise X̂_0, as ParaDiGMS does.
    if cfg.precondition == 0:
        win.scatter_copies(range(p + 1), ctx.noise(seeds.INIT) if comm.rank == 0 else None, 0, LINES["init"], -1)
    else:
        initial = initial_points(ctx, win, cfg.precondition, p) if comm.rank == 0 else None
        win.scatter_points(range(p + 1), initial, 0, LINES["init"], k=-1)

    n, k = 0, 0                                                                 # Line 2
    iterations = []
    while n < N:                                                                # Line 3
        delta, x0_first, x0_last, history = win.solve_subproblems(n, p, k)     # Lines 4-5
        new, end = win.cumulative_update(n, p, delta, history, k)              # Line 6 (Eq. 13)
        f = win.first_unconverged(n, p, new, cfg.tol, k)                       # Line 7 (Eq. 14)
        win.commit(new)
        s, p_next = f - n, min(win.p_max, N - f)
        fresh = range(n + p + 1, f + p_next + 1)                                # points entering the window
        maker = win.owner(n + p - 1)                                            # holds X̂_{n+p} and the score at t_{n+p-1}
        values = None
        if comm.rank == maker and len(fresh):
            clean = (x0_first if cfg.clean_estimate == "first" else x0_last)[n + p - 1]   # Line 8 (Eq. 16)
            values = bridge_chain(ctx, win, end[0], clean, n + p, fresh[-1], k)          # Line 9 (Eq. 15)
        win.scatter_points(fresh, values, maker, LINES["new"], k)
        iterations.append({"iter": k, "begin": n, "window": p, "stride": s, "nfe": p * win.L})
        n, k, p = f, k + 1, p_next                                              # Line 10
        win.drop_before(n)

    win.report(iterations)
    return win.result(LINES["ret"], k)


def initial_points(ctx, win: Window, M: int, p: int) -> dict[int, torch.Tensor]:
    """Eq. 17 for points 0 .. p (M ≥ 1): X̂_0 ~ N(0, I); M coarse sampler steps (one model
    evaluation each, Eq. 15), then the reverse process conditioned on the clean estimate of
    the M-th evaluation (Eq. 16)."""
    x = ctx.noise(seeds.INIT)
    points = {0: x}
    clean = None
    for i in range(p):
        g = win.grid(i)
        if i < M:
            eps = ctx.eps(x, win.solver.timesteps[g], line=LINES["init"])
            clean = win.solver.predict_x0(x, eps, g)
        with ctx.host("bridge", LINES["init"]):
            x = win.solver.bridge(x, clean, g, win.grid(i + 1), _bridge_noise(ctx, win, 0, i + 1))
        points[i + 1] = x
    return points


def bridge_chain(ctx, win: Window, x, clean, start: int, last: int, k: int) -> dict[int, torch.Tensor]:
    """Line 9: X̂_{i+1} ~ q(X̂_{i+1} | X̂_i, X̂_clean) for i = start .. last-1."""
    values = {}
    with ctx.host("bridge", LINES["new"], iter=k):
        for i in range(start, last):
            x = win.solver.bridge(x, clean, win.grid(i), win.grid(i + 1), _bridge_noise(ctx, win, k + 1, i + 1))
            values[i + 1] = x
    return values


def _bridge_noise(ctx, win, index, point):
    return ctx.noise(seeds.BRIDGE, index, point) if win.solver.stochastic else None
