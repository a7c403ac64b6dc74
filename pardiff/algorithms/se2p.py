"""SE2P: Sample Enhancement using Two (or P) Parallel processors.

Cisneros-Velarde, "It Takes Two to Tango: Two Parallel Samplers Improve Quality
in Diffusion Models for Limited Steps" (2025): Algorithm 1 (P = 2) and its
extension Algorithm 2 (App. E, P > 2). This rank is Proc p of P = world size.
Trace labels carry the line numbers of the algorithm being run (SE2P-A1:9 ...);
docs/algorithms/se2p.md maps every line and states each reading of the paper.
"""
from __future__ import annotations

import math

import torch

from .. import seeds
from ..solvers import ddpm, posterior

# Line numbers of the pseudocode, Algorithm 1 (two procs) and Algorithm 2 (P procs).
LINES = {
    "A1": dict(init=2, t_hat=5, x0_hat=6, mu_pred=7, x_pred=8, integrate=9, sync=10, seed=12, eps=15,
               denoise=16, ret=19),
    "A2": dict(init=2, t_hat=6, x0_hat=7, mu_pred=8, x_pred=9, integrate=10, sync=11, seed=14, eps=17,
               denoise=18, ret=21),
}


def mu_pred(sched, x0_hat, x, t_hat, reading="ho", algorithm="A1"):
    """μ̃_pred, the posterior mean one step down from t̂ (Alg. 1 line 7 / Alg. 2 line 8).

    ``ho``: Ho et al. Eq. 7, which the paper cites:
        (√ᾱ_{t̂−1} β_t̂ x̂_0 + √α_t̂ (1−ᾱ_{t̂−1}) x) / (1−ᾱ_t̂).
    ``as-printed``: the formula as typeset, which divides by √(1−ᾱ_t̂) and, in
    Algorithm 1 only, has √ᾱ_t̂ where Algorithm 2 has √α_t̂.
    """
    a, a_prev, beta = sched.alpha_bar(t_hat), sched.alpha_bar(t_hat - 1), sched.beta(t_hat)
    if reading == "ho":
        return posterior.posterior_mean(x, x0_hat, a, a_prev)
    x_coef = math.sqrt(a) if algorithm == "A1" else math.sqrt(1 - beta)
    return (math.sqrt(a_prev) * beta * x0_hat + x_coef * (1 - a_prev) * x) / math.sqrt(1 - a)


def predictor(sched, x, v, t_hat, noise, rho: float, reading="ho", algorithm="A1"):
    """x̂_pred (Alg. 1 lines 6-8 / Alg. 2 lines 7-9): x̂_0 from this proc's latent and its last
    model output, the posterior mean one step down from t̂, and ρ-scaled posterior noise."""
    a, a_prev = sched.alpha_bar(t_hat), sched.alpha_bar(t_hat - 1)
    x0_hat = posterior.predict_x0(x, v, a, sched.clip)                                   # line 6
    mu = mu_pred(sched, x0_hat, x, t_hat, reading, algorithm)                            # line 7
    return mu + rho * math.sqrt(posterior.posterior_variance(a, a_prev)) * noise         # line 8


def integrate(gamma: float, x, other):
    """Line 9 (A2: 10): x^(p) = γ x^(p) + (1 − γ) · what Proc p−1 sent (x̂_pred, or its latent)."""
    return gamma * x + (1 - gamma) * other


def se2p(ctx) -> torch.Tensor | None:
    """SE2P, Algorithms 1 and 2 (Cisneros-Velarde 2025); returns the sample on rank 0."""
    cfg, comm, sched = ctx.cfg, ctx.comm, ctx.schedule
    P, p = comm.size, comm.rank
    alg = "A1" if P == 2 else "A2"

    def line(name):
        return f"SE2P-{alg}:{LINES[alg][name]}"

    ts = sched.timesteps(cfg.steps)          # [t_{N-1}, ..., t_0], SE2P App. C
    N = len(ts)
    jump = sched.T // N                      # denoise(t, ·) steps from t to t - T/N
    t_grid = {N - 1 - i: t for i, t in enumerate(ts)}

    # Line 2: Proc 0 draws x_{N-1} ~ N(0, I); every proc starts from it.
    if p == 0:
        x = ctx.noise(seeds.INIT)
        for q in range(1, P):
            comm.send(x, q, label="latent", line=line("init"), step=N - 1)
    else:
        x = comm.recv(ctx.empty(), 0, label="latent", line=line("init"), step=N - 1)

    v = None                                 # v^(p): this proc's last model output, kept for line 6/7
    for k in range(N - 1, -1, -1):
        if k != N - 1:
            # Lines 5-11 for p' = 1, ..., P-1 in turn: Proc p'-1 predicts, Proc p' integrates.
            if p >= 1:
                x = _integrate(ctx, x, k, line)
            if p <= P - 2:
                x = _predict_and_hand_over(ctx, x, v, k, t_grid[k] + P - 1 - p, line, alg)

        # Line 12: all procs fix the same random seed (App. B note 3).
        seed = _shared_seed(ctx, k, line("seed"))

        # Lines 13-17: parallel denoising, Proc p at t_k + P - 1 - p.
        t = t_grid[k] + P - 1 - p
        v = ctx.eps(x, t, line=line("eps"), step=k)
        with ctx.host("denoise", line("denoise"), step=k):
            z = seeds.gaussian(ctx.shape, seed, ctx.device)
            x = ddpm.step(x, v, sched.alpha_bar(t), sched.alpha_bar(t - jump), z, sched.clip)

    # Line 19 (A2: 21): return the sample on Proc 0.
    if cfg.return_latent == "proc0":
        return x if p == 0 else None
    if p == P - 1:
        comm.send(x, 0, label="latent", line=line("ret"), step=0)
    elif p == 0:
        return comm.recv(x, P - 1, label="latent", line=line("ret"), step=0)
    return None


def _predict_and_hand_over(ctx, x, v, k, t_hat, line, alg):
    """This rank as Proc p-1: lines 5-8 (predictor), send it (line 9), take Proc p's latent (line 10).

    With ``--exchange swap`` line 10's message is Proc p's latent before line 9, sent while
    line 9's travels, and both procs compute line 9 (docs/algorithms/se2p.md): the same
    numbers, one message latency on the critical path instead of two."""
    cfg, comm, sched, p = ctx.cfg, ctx.comm, ctx.schedule, ctx.comm.rank
    swap = cfg.exchange == "swap"
    if cfg.integration == "naive":
        # §4.5 ablation: integrate the latents themselves, no predictor.
        outgoing, label = x, "latent"
    else:
        with ctx.host("x_pred", line("x_pred"), step=k):                              # lines 6-8
            noise = ctx.noise(seeds.PREDICTOR, k, p)                                  # line 8: own noise
            x_pred = predictor(sched, x, v, t_hat, noise, cfg.rho, cfg.mu_pred, alg)
        outgoing, label = x_pred, "x_pred"
        if cfg.integration == "predictor-tk1":
            # Fig. 27 variant: line 9 becomes x^(p) = γ x^(p-1) + (1-γ) x̂_pred; Proc p-1 holds
            # both terms, so it mixes them and sends the result.
            with ctx.host("integrate", line("integrate"), step=k):
                outgoing, label = integrate(cfg.gamma, x, x_pred), "latent"
            if swap:                       # Proc p-1 already holds line 10's value: nothing comes back
                comm.send(outgoing, p + 1, label=label, line=line("integrate"), step=k)
                return outgoing
    if not swap:
        comm.send(outgoing, p + 1, label=label, line=line("integrate"), step=k)
        # Line 10: x^(p-1) = x^(p), sent back by Proc p.
        return comm.recv(x, p + 1, label="latent", line=line("sync"), step=k)
    sending = comm.isend(outgoing, p + 1, label=label, line=line("integrate"), step=k)
    theirs = comm.recv(ctx.empty(), p + 1, label="latent", line=line("sync"), step=k)
    sending.wait()
    with ctx.host("integrate", line("integrate"), step=k):                            # line 9, as Proc p does it
        return integrate(cfg.gamma, theirs, outgoing)


def _integrate(ctx, x, k, line):
    """This rank as Proc p: line 9 (integrate what Proc p-1 sent), line 10 (send the result back;
    with ``--exchange swap``, send x^(p) before line 9 instead)."""
    cfg, comm, p = ctx.cfg, ctx.comm, ctx.comm.rank
    label = "x_pred" if cfg.integration == "predictor" else "latent"
    sending = None
    if cfg.exchange == "swap" and cfg.integration != "predictor-tk1":
        sending = comm.isend(x, p - 1, label="latent", line=line("sync"), step=k)
    received = comm.recv(ctx.empty(), p - 1, label=label, line=line("integrate"), step=k)
    if cfg.integration == "predictor-tk1":
        x = received                                             # already γ x^(p-1) + (1-γ) x̂_pred
    else:
        if sending is not None:
            sending.wait()
        with ctx.host("integrate", line("integrate"), step=k):
            x = integrate(cfg.gamma, x, received)
    if cfg.exchange == "roundtrip":
        comm.send(x, p - 1, label="latent", line=line("sync"), step=k)
    return x


def _shared_seed(ctx, k, line) -> int:
    """Line 12: the step seed, sent by Proc 0 (App. B note 3 (i)) or looked up (note 3 (ii))."""
    seed = seeds.seed_for(ctx.cfg.seed, seeds.STEP, k)
    if ctx.cfg.seed_sharing == "precomputed":
        return seed
    comm = ctx.comm
    buf = torch.tensor([seed if comm.rank == 0 else 0], dtype=torch.int64)
    if comm.rank == 0:
        for q in range(1, comm.size):
            comm.send(buf, q, label="seed", line=line, step=k)
        return seed
    return int(comm.recv(buf, 0, label="seed", line=line, step=k)[0])
