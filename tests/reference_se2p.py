"""An independent, single-process SE2P written straight from the paper's pseudocode.

It shares nothing with pardiff.algorithms or pardiff.solvers: every proc is an entry
of a dict, the DDPM step is Eq. (2) as printed (not the x̂_0 route pardiff uses), and
jump sampling is App. C's t_k = k·⌊1000/N⌋ + 1. It borrows only the model (the
ε it evaluates) and pardiff.seeds (so both draw the same Gaussians).
"""
from __future__ import annotations

import math

import torch

from pardiff import seeds


def _abar(model, t):
    return 1.0 if t < 0 else float(model.schedule.alphas_cumprod[t])


def _gauss(shape, seed, *key):
    return seeds.gaussian(shape, seeds.seed_for(seed, *key))


def jump_steps(N, T=1000):
    """App. C: t_k for k = 0..N-1 (t_0 = 1)."""
    return [k * (T // N) + 1 for k in range(N)]


def denoise(model, t, x, v, z, jump):
    """Eq. (2) with jump sampling: α_t := ᾱ_t / ᾱ_{t-jump}, β_t := 1 - α_t, β̃_t as in §2."""
    a, a_prev = _abar(model, t), _abar(model, t - jump)
    alpha = a / a_prev
    beta = 1 - alpha
    beta_tilde = (1 - a_prev) / (1 - a) * beta
    return (x - beta / math.sqrt(1 - a) * v) / math.sqrt(alpha) + math.sqrt(beta_tilde) * z


def predictor(model, x, v, t_hat, rho, z, mu_pred="ho", alg="A1"):
    """Lines 5-8 (Alg. 1) with Ho et al.'s Eq. (7) posterior mean, or (``as-printed``) the mean
    as typeset: over √(1-ᾱ_t̂), with √ᾱ_t̂ on x in Alg. 1 line 7 and √α_t̂ in Alg. 2 line 8."""
    a, a_prev = _abar(model, t_hat), _abar(model, t_hat - 1)
    beta = float(model.schedule.betas[t_hat])
    x0 = (x - math.sqrt(1 - a) * v) / math.sqrt(a)
    if mu_pred == "ho":
        mu = (math.sqrt(a_prev) * beta * x0 + math.sqrt(1 - beta) * (1 - a_prev) * x) / (1 - a)
    else:
        on_x = math.sqrt(a) if alg == "A1" else math.sqrt(1 - beta)
        mu = (math.sqrt(a_prev) * beta * x0 + on_x * (1 - a_prev) * x) / math.sqrt(1 - a)
    return mu + rho * math.sqrt((1 - a_prev) / (1 - a) * beta) * z


def sequential(model, N, seed, batch):
    """The baseline: jump sampling on one proc."""
    shape = (batch, *model.sample_shape)
    ts, jump = jump_steps(N), 1000 // N
    x = _gauss(shape, seed, seeds.INIT)
    for k in range(N - 1, -1, -1):
        x = denoise(model, ts[k], x, model.eps(x, ts[k]), _gauss(shape, seed, seeds.STEP, k), jump)
    return x


def algorithm1(model, N, seed, batch, gamma, rho, mu_pred="ho"):
    """Algorithm 1, two procs, literally: returns (x^(0), x^(1)) after the loop."""
    shape = (batch, *model.sample_shape)
    ts, jump = jump_steps(N), 1000 // N
    x0 = _gauss(shape, seed, seeds.INIT)                       # line 2
    x1 = x0.clone()
    v0 = None
    for k in range(N - 1, -1, -1):                             # line 3
        if k != N - 1:                                         # line 4
            t_hat = ts[k] + 1                                  # line 5
            x_pred = predictor(model, x0, v0, t_hat, rho, _gauss(shape, seed, seeds.PREDICTOR, k, 0), mu_pred, "A1")
            x1 = gamma * x1 + (1 - gamma) * x_pred             # line 9
            x0 = x1.clone()                                    # line 10
        z = _gauss(shape, seed, seeds.STEP, k)                 # line 12: shared seed
        t0, t1 = ts[k] + 1, ts[k]                              # line 14
        v0, v1 = model.eps(x0, t0), model.eps(x1, t1)          # line 15
        x0, x1 = denoise(model, t0, x0, v0, z, jump), denoise(model, t1, x1, v1, z, jump)   # line 16
    return x0, x1


def algorithm2(model, N, P, seed, batch, gamma, rho, integration="predictor", mu_pred="ho"):
    """Algorithm 2 (P procs) and the ablations; returns the list of every proc's final latent."""
    shape = (batch, *model.sample_shape)
    ts, jump = jump_steps(N), 1000 // N
    x = {0: _gauss(shape, seed, seeds.INIT)}                   # line 2
    for p in range(1, P):
        x[p] = x[0].clone()
    v = {}
    for k in range(N - 1, -1, -1):                             # line 3
        if k != N - 1:                                         # line 4
            for p in range(1, P):                              # line 5
                t_hat = ts[k] + P - p                          # line 6
                if integration == "naive":
                    x[p] = gamma * x[p] + (1 - gamma) * x[p - 1]
                else:
                    z = _gauss(shape, seed, seeds.PREDICTOR, k, p - 1)
                    x_pred = predictor(model, x[p - 1], v[p - 1], t_hat, rho, z, mu_pred, "A2")   # lines 7-9
                    if integration == "predictor":
                        x[p] = gamma * x[p] + (1 - gamma) * x_pred                   # line 10
                    else:                                                            # Fig. 27
                        x[p] = gamma * x[p - 1] + (1 - gamma) * x_pred
                x[p - 1] = x[p].clone()                        # line 11
        z = _gauss(shape, seed, seeds.STEP, k)                 # line 14
        for p in range(P):                                     # lines 15-19
            t = ts[k] + P - 1 - p
            v[p] = model.eps(x[p], t)
            x[p] = denoise(model, t, x[p], v[p], z, jump)
    return [x[p] for p in range(P)]
