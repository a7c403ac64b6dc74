"""Independent single-process ParaSolver (Lu et al. 2025, Alg. 1) and ParaDiGMS (Shih et al. 2023).

Nothing here comes from pardiff.algorithms or pardiff.solvers: the sampler steps are
diffusers' own schedulers (DDIMScheduler / DDPMScheduler for ParaSolver's subproblems,
DDIM/DDPMParallelScheduler.batch_step_no_noise for ParaDiGMS, as diffusers' ParaDiGMS
pipeline uses them), every point is a list entry, and each formula is written from the
papers. Shared with pardiff: the model and pardiff.seeds (so both draw the same noise).
"""
from __future__ import annotations

import math

import torch
from diffusers import DDIMParallelScheduler, DDIMScheduler, DDPMParallelScheduler, DDPMScheduler

from pardiff import seeds

BRIDGE = 3          # pardiff's seeds.BRIDGE stream: the draws must be the same ones


def _gauss(shape, seed, *key):
    return seeds.gaussian(shape, seeds.seed_for(seed, *key))


def _scheduler(sampler, parallel=False):
    if sampler == "ddim":
        cls = DDIMParallelScheduler if parallel else DDIMScheduler
        return cls(clip_sample=False, steps_offset=1)
    cls = DDPMParallelScheduler if parallel else DDPMScheduler
    return cls(clip_sample=False, steps_offset=1)


def parasolver(model, sampler, S, N, M, window, tol, seed, batch, clean_estimate="first", last_variance="step"):
    """Algorithm 1 of ParaSolver, literally; returns (X̂_N, list of strides). ``last_variance="authors"``:
    the last subinterval's σ² of Eq. 14 ends at timestep 0's ᾱ, as the authors' code has it."""
    shape = (batch, *model.sample_shape)
    sched = _scheduler(sampler)
    sched.set_timesteps(S)
    ts = [int(t) for t in sched.timesteps]
    acp = model.schedule.alphas_cumprod
    L = S // N

    def abar(g):                                  # ᾱ at fine grid point g (g = S: the clean end)
        return 1.0 if g >= S else float(acp[ts[g]])

    def phi(x, i):
        """Φ(t_{i+1}, t_i, x): L steps of the sequential sampler; also x̂_0 of the first and last."""
        x0s = []
        for g in range(i * L, (i + 1) * L):
            kw = {}
            if sampler == "ddpm":
                kw["generator"] = torch.Generator().manual_seed(seeds.seed_for(seed, seeds.STEP, S - 1 - g))
            out = sched.step(model.eps(x, ts[g]), ts[g], x, **kw)
            x = out.prev_sample
            x0s.append(out.pred_original_sample)
        return x, x0s[0], x0s[-1]

    def q(x, x0, i, key):
        """Eq. 15: X̂_{t_{i+1}} ~ q(X̂_{t_{i+1}} | X̂_{t_i}, x̂_0) over subinterval i."""
        a, a_next = abar(i * L), abar((i + 1) * L)
        if sampler == "ddim":                     # η = 0: the deterministic DDIM posterior
            eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
            return math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps
        alpha = a / a_next                        # Ho et al. Eq. 6-7: the Gaussian posterior
        mean = (math.sqrt(a_next) * (1 - alpha) / (1 - a)) * x0 + (math.sqrt(alpha) * (1 - a_next) / (1 - a)) * x
        return mean + math.sqrt((1 - a_next) / (1 - a) * (1 - alpha)) * _gauss(shape, seed, BRIDGE, *key)

    def sigma2(i):                                # σ²_{t_i} of Eq. 14: the DDPM posterior variance over subinterval i
        i = min(i, N - 1)
        a, a_next = abar(i * L), abar((i + 1) * L)
        if i == N - 1 and last_variance == "authors":
            a_next = float(acp[0])
        return (1 - a_next) / (1 - a) * (1 - a / a_next)

    p = min(window, N)
    X = [None] * (N + 1)
    X[0] = _gauss(shape, seed, seeds.INIT)
    clean = None
    for i in range(p):                            # Line 1, Eq. 17
        if M == 0:
            X[i + 1] = X[0]
            continue
        if i < M:
            a = abar(i * L)
            clean = (X[i] - math.sqrt(1 - a) * model.eps(X[i], ts[i * L])) / math.sqrt(a)   # Eq. 16
        X[i + 1] = q(X[i], clean, i, (0, i + 1))
    n, k, strides = 0, 0, []                      # Line 2
    while n < N:                                  # Line 3
        results = {i: phi(X[i], i) for i in range(n, n + p)}                       # Line 4
        delta = {i: results[i][0] - X[i] for i in range(n, n + p)}                 # Line 5
        new, value = {}, X[n]
        for i in range(n, n + p):                                                  # Line 6, Eq. 13
            value = value + delta[i]
            new[i + 1] = value
        f = n + p                                                                  # Line 7, Eq. 14
        for i in range(n + 1, n + p + 1):
            d = (new[i] - X[i]).reshape(batch, -1).pow(2).mean(1).max().item()
            if d > tol ** 2 * sigma2(i):
                f = i
                break
        for i in range(n + 1, n + p + 1):
            X[i] = new[i]
        s, p_next = f - n, min(window, N - f)
        clean = results[n + p - 1][1 if clean_estimate == "first" else 2]           # Line 8
        for i in range(n + p, f + p_next):                                         # Line 9
            X[i + 1] = q(X[i], clean, i, (k + 1, i + 1))
        strides.append(s)
        n, k, p = f, k + 1, p_next                                                 # Line 10
    return X[N], strides


def paradigms(model, sampler, S, window, tol, seed, batch):
    """ParaDiGMS as diffusers' StableDiffusionParadigmsPipeline loops; returns (x_S, strides)."""
    shape = (batch, *model.sample_shape)
    sched = _scheduler(sampler, parallel=True)
    sched.set_timesteps(S)
    ts = sched.timesteps
    p = min(window, S)
    buffer = torch.stack([_gauss(shape, seed, seeds.INIT)] * (S + 1))
    variance = [float(sched._get_variance(int(t))) for t in ts]
    noise = torch.stack([math.sqrt(v) * _gauss(shape, seed, seeds.STEP, S - 1 - j) for j, v in enumerate(variance)])
    if sampler == "ddim":
        noise.zero_()                                            # an ODE sampler adds no noise
    begin, end, strides = 0, p, []
    while begin < S:
        block = buffer[begin:end]
        eps = torch.cat([model.eps(block[j], int(ts[begin + j])) for j in range(end - begin)])
        t = ts[begin:end].repeat_interleave(batch)
        denoised = sched.batch_step_no_noise(eps, t, block.flatten(0, 1)).reshape(block.shape)
        new = buffer[begin] + torch.cumsum(denoised - block, 0) + torch.cumsum(noise[begin:end], 0)
        error = (new - buffer[begin + 1:end + 1]).reshape(end - begin, batch, -1).pow(2).mean(-1).max(1).values
        scale = torch.tensor([variance[min(j, S - 1)] for j in range(begin + 1, end + 1)])
        failing = (error > tol ** 2 * scale).nonzero()
        ind = int(failing[0]) if len(failing) else end - begin
        new_begin = begin + min(1 + ind, p)
        new_end = min(new_begin + p, S)
        buffer[begin + 1:end + 1] = new
        buffer[end:new_end + 1] = buffer[end]
        strides.append(new_begin - begin)
        begin, end = new_begin, new_end
    return buffer[S], strides
