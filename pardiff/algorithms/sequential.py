"""The one-proc baseline: DDPM jump sampling (SE2P §2, Eq. 2 over t_{N-1}, ..., t_0)."""
from __future__ import annotations

import torch

from .. import seeds
from ..solvers import ddpm


def sequential(ctx) -> torch.Tensor:
    """DDPM jump sampling on one rank (the baseline of SE2P §4).

    Draws the same initial latent (stream INIT) and the same per-step noise
    (stream STEP, index k) as SE2P, so SE2P with γ = 1 returns this sample.
    """
    ts = ctx.schedule.timesteps(ctx.cfg.steps)    # [t_{N-1}, ..., t_0]
    N = len(ts)
    x = ctx.noise(seeds.INIT)
    for i, t in enumerate(ts):
        k = N - 1 - i
        t_prev = ts[i + 1] if i + 1 < N else -1
        eps = ctx.eps(x, t, line="SEQ:eps", step=k)
        with ctx.host("denoise", "SEQ:denoise", step=k):
            x = ddpm.step(ctx.schedule, x, eps, t, t_prev, ctx.noise(seeds.STEP, k))
    return x
