"""EDM's Heun sampler on VP models, and its IIA variants BIIA-EDM and IIA-EDM.

EDM (Karras et al. 2022, Alg. 1, deterministic) solves the probability-flow ODE in the
variance-exploding form. A VP model runs in it through the conversion IIA uses (Eq. 9):
z_t = α_t (x + σ̃_t ε) with σ̃_t = σ_t / α_t, so the state is y = z / α_t (the "α_t = 1"
configuration of Lemma 1), time is σ̃, and the denoiser is

    D(y; σ̃) = y − σ̃ ε_θ(α y, t(σ̃)),   α = 1 / √(1 + σ̃²),

with t(σ̃) the model's (fractional) timestep of that noise level (Schedule.t_of_sigma).
Steps σ̃_0 > … > σ̃_{N−1} > σ̃_N = 0 follow Karras et al.'s ρ = 7 schedule between the model's
σ̃ at t = T−1 and t = 0. One step (Eq. 11-12):

    d_i = (y_i − D_i)/σ̃_i,  ỹ = y_i + h_i d_i,  d'_i = (ỹ − D(ỹ; σ̃_{i+1}))/σ̃_{i+1},
    y_{i+1} = y_i + h_i (d_i + d'_i)/2      (h_i = σ̃_{i+1} − σ̃_i; Euler into σ̃ = 0)

2N − 1 model evaluations. BIIA-EDM and IIA-EDM replace the increment by fitted step sizes
on the last r + 1 steps' quantities (Eq. 13 / Alg. 2 and Lemma 1 / Eq. 18 / Alg. 1).
"""
from __future__ import annotations

import numpy as np
import torch

from .. import seeds

RHO = 7.0


def karras_sigmas(schedule, steps: int, rho: float = RHO) -> list[float]:
    """σ̃_0 .. σ̃_{N−1} on Karras et al.'s ρ-schedule over the model's range, then 0."""
    s_min, s_max = schedule.sigma_tilde(0), schedule.sigma_tilde(schedule.T - 1)
    ramp = np.linspace(0, 1, steps) if steps > 1 else np.zeros(1)
    sig = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return [float(s) for s in sig] + [0.0]


class EDM:
    """EDM (Heun), the base of BIIA-EDM and IIA-EDM. Coefficients: one row per step, holding
    EDM's own step sizes where nothing was fitted."""

    name = "edm"
    history = 0                   # r: how many earlier steps' quantities a step combines

    def __init__(self, schedule, steps: int, phi=None):
        self.schedule = schedule
        self.S = steps
        self.sigmas = karras_sigmas(schedule, steps)
        self.timesteps = [schedule.t_of_sigma(s) for s in self.sigmas[:-1]]
        self.phi = self.default_step_sizes() if phi is None else np.array(phi, dtype=np.float64)

    @property
    def grid(self) -> list[float]:
        return self.sigmas

    @property
    def fitted_steps(self) -> range:
        """Alg. 1 and 2 fit i = 1 .. N-2: step 0 keeps EDM's step, step N-1 is Euler into σ̃ = 0."""
        return range(1, self.S - 1)

    def default_step_sizes(self) -> np.ndarray:
        """EDM's own step sizes in this variant's parametrisation, one row per step."""
        return np.ones((self.S, 1))

    def set_step_size(self, i: int, phi) -> None:
        """φ_i of one step (fit-iia fits them in order)."""
        self.phi[i] = phi

    def denoise(self, ctx, y, sigma: float, *, line: str, step: int, labels=None):
        """D(y; σ̃) through the VP model (one traced evaluation)."""
        alpha = (1 + sigma ** 2) ** -0.5
        eps = ctx.eps(alpha * y, self.schedule.t_of_sigma(sigma), line=line, step=step, labels=labels)
        return y - sigma * eps

    def heun_terms(self, ctx, y, i: int, labels=None):
        """Step i's evaluations: (D(y_i; σ̃_i), ỹ_{i+1}, D(ỹ_{i+1}; σ̃_{i+1}) or None at the end)."""
        s, s_next = self.sigmas[i], self.sigmas[i + 1]
        D = self.denoise(ctx, y, s, line="EDM:d", step=i, labels=labels)
        y_euler = y + (s_next - s) * (y - D) / s
        if s_next == 0:
            return D, y_euler, None
        return D, y_euler, self.denoise(ctx, y_euler, s_next, line="EDM:d'", step=i, labels=labels)

    def quantities(self, i: int, y, D, y_euler, D_next) -> list:
        """This step's quantities (k = 0), kept for the next r steps: here ½ d_i + ½ d'_i."""
        s, s_next = self.sigmas[i], self.sigmas[i + 1]
        return [0.5 * (y - D) / s + 0.5 * (y_euler - D_next) / s_next]

    def design(self, i: int, recent: list[list]) -> list:
        """The vectors V_q whose combination Σ_q φ_iq V_q is step i's increment; ``recent`` holds
        the quantities of steps i, i−1, … (as many as exist, up to r + 1)."""
        h = self.sigmas[i + 1] - self.sigmas[i]
        return [h * q[0] for q in recent]

    def increment(self, i: int, recent: list[list], phi=None):
        """y_{i+1} − y_i: the design vectors weighted by step i's step sizes (``phi``: other ones)."""
        phi = self.phi[i] if phi is None else phi
        return sum(float(phi[q]) * v for q, v in enumerate(self.design(i, recent)))

    def sample(self, ctx) -> torch.Tensor:
        y = self.sigmas[0] * ctx.noise(seeds.INIT)              # z_0 ~ N(0, α² σ̃² I), so y_0 = σ̃_0 n
        recent = []
        for i in range(self.S):
            D, y_euler, D_next = self.heun_terms(ctx, y, i)
            if D_next is None:                                  # the last step: Euler into σ̃ = 0
                return y_euler
            with ctx.host("step", "EDM:step", step=i):
                recent = [self.quantities(i, y, D, y_euler, D_next)] + recent[:self.history]
                y = y + self.increment(i, recent)
        return y


class BIIAEDM(EDM):
    """BIIA-EDM (Eq. 13, Alg. 2): y_{i+1} = y_i + h_i Σ_{k=0..r} γ_ik (½ d_{i−k} + ½ d'_{i−k+1|i−k});
    EDM is γ_i0 = 1, γ_ik = 0 otherwise."""

    name = "biia-edm"

    def __init__(self, schedule, steps, phi=None, history: int = 1):
        self.history = history
        super().__init__(schedule, steps, phi)

    def default_step_sizes(self) -> np.ndarray:
        phi = np.zeros((self.S, self.history + 1))
        phi[:, 0] = 1.0
        return phi


class IIAEDM(EDM):
    """IIA-EDM (Lemma 1, Eq. 17-18, Alg. 1): y_{i+1} = y_i + Σ_{k=0..r} β^ε_ik [y_{i−k} − D(y_{i−k})]
    + β^D_ik [D(y_{i−k}) − D(ỹ_{i−k+1})]; EDM is β^ε_i0 = h_i/σ̃_i, β^D_i0 = h_i/(2σ̃_{i+1})."""

    name = "iia-edm"

    def __init__(self, schedule, steps, phi=None, history: int = 1):
        self.history = history
        super().__init__(schedule, steps, phi)

    def default_step_sizes(self) -> np.ndarray:
        phi = np.zeros((self.S, 2 * (self.history + 1)))
        for i in range(self.S):
            s, s_next = self.sigmas[i], self.sigmas[i + 1]
            if s_next > 0:
                phi[i, 0], phi[i, 1] = (s_next - s) / s, (s_next - s) / (2 * s_next)
        return phi

    def quantities(self, i, y, D, y_euler, D_next):
        return [y - D, D - D_next]

    def design(self, i, recent):
        return [v for q in recent for v in q]
