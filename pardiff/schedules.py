"""Noise schedules (the DDPM β's of a model) and timestep grids.

Timesteps follow diffusers' convention: an integer ``t`` in ``0 .. T-1`` indexes
``alphas_cumprod[t]``, and the step below the last grid point has ``ᾱ = 1``
(``alpha_bar(-1) == 1``), exactly as ``DDPMScheduler.step`` treats ``prev_t < 0``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

SPACINGS = ("leading", "trailing", "linspace")


def make_betas(beta_schedule: str = "linear", beta_start: float = 1e-4, beta_end: float = 0.02,
               num_train_timesteps: int = 1000, trained_betas=None) -> np.ndarray:
    """The β_t of diffusers' schedulers, in float64 (diffusers computes them in float32)."""
    T = num_train_timesteps
    if trained_betas is not None:
        return np.asarray(trained_betas, dtype=np.float64)
    if beta_schedule == "linear":
        return np.linspace(beta_start, beta_end, T, dtype=np.float64)
    if beta_schedule == "scaled_linear":
        return np.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=np.float64) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=np.float64)
    raise ValueError(f"unsupported beta_schedule {beta_schedule!r}")


@dataclass(frozen=True)
class Schedule:
    """A model's DDPM noise schedule: β_t, α_t = 1 − β_t, ᾱ_t = ∏_{s≤t} α_s."""

    betas: np.ndarray
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    steps_offset: int = 1            # leading grids: SE2P App. C's offset unless the model's config sets one
    set_alpha_to_one: bool = True    # DDIM: ᾱ past the last step is 1 (else ᾱ_0), as diffusers

    @classmethod
    def from_config(cls, config: dict) -> "Schedule":
        """From a diffusers scheduler config (a dict as in ``scheduler_config.json``)."""
        betas = make_betas(config.get("beta_schedule", "linear"), config.get("beta_start", 1e-4),
                           config.get("beta_end", 0.02), config.get("num_train_timesteps", 1000),
                           config.get("trained_betas"))
        return cls(betas=betas, clip_sample=bool(config.get("clip_sample", False)),
                   clip_sample_range=float(config.get("clip_sample_range", 1.0)),
                   steps_offset=int(config.get("steps_offset", 1)),
                   set_alpha_to_one=bool(config.get("set_alpha_to_one", True)))

    @property
    def T(self) -> int:
        return len(self.betas)

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return self._acp

    def alpha_bar(self, t: int) -> float:
        """ᾱ_t, with ᾱ_t = 1 for t < 0 (the clean end of the chain)."""
        return 1.0 if t < 0 else float(self._acp[t])

    @property
    def clip(self) -> float | None:
        """The range x̂_0 is clamped to, or None where the model's scheduler does not clip."""
        return self.clip_sample_range if self.clip_sample else None

    def beta(self, t: int) -> float:
        return float(self.betas[t])

    def alpha_bar_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ for a tensor of timesteps (float64, on t's device).

        Integer t: the table, with ᾱ = 1 where t < 0. Fractional t (IIA's fine-grained
        steps, EDM's σ grid): log σ̃, σ̃ = √((1−ᾱ)/ᾱ), interpolated linearly between integer
        timesteps (as diffusers maps Karras sigmas to timesteps), and below t = 0 ᾱ rising
        linearly to 1 at t = −1, the clean end.
        """
        acp = self._table(t.device)
        if not t.is_floating_point():
            return torch.where(t < 0, torch.ones_like(acp[0]), acp[t.clamp(min=0)])
        t = t.to(torch.float64).clamp(-1, self.T - 1)
        log_sigma = 0.5 * torch.log((1 - acp) / acp)
        lo = t.floor().clamp(0, self.T - 2).long()
        ls = log_sigma[lo] + (t - lo) * (log_sigma[lo + 1] - log_sigma[lo])
        return torch.where(t >= 0, torch.sigmoid(-2 * ls), 1 + (t + 1) * (acp[0] - 1))

    def alpha_bar_at(self, t: float) -> float:
        """ᾱ at a (possibly fractional) timestep t in [−1, T−1]."""
        return float(self.alpha_bar_tensor(torch.tensor([float(t)], dtype=torch.float64))[0])

    def sigma_tilde(self, t: float) -> float:
        """σ̃_t = σ_t / α_t = √((1−ᾱ_t)/ᾱ_t), EDM's noise level of a VP model (IIA Eq. 9)."""
        a = self.alpha_bar_at(t)
        return ((1 - a) / a) ** 0.5

    def t_of_sigma(self, sigma: float) -> float:
        """The (fractional) timestep whose σ̃ is ``sigma``: the inverse of ``sigma_tilde``."""
        if sigma <= 0:
            return -1.0
        log_sigma = 0.5 * np.log((1 - self._acp) / self._acp)
        if np.log(sigma) >= log_sigma[0]:
            return float(np.interp(np.log(sigma), log_sigma, np.arange(self.T, dtype=np.float64)))
        a = 1 / (1 + sigma ** 2)
        return float((a - 1) / (self._acp[0] - 1) - 1)

    def __post_init__(self):
        object.__setattr__(self, "_acp", np.cumprod(1.0 - np.asarray(self.betas, dtype=np.float64)))
        object.__setattr__(self, "_tables", {})

    def _table(self, device) -> torch.Tensor:
        """ᾱ as a float64 tensor on ``device`` (made once per device)."""
        if device not in self._tables:
            self._tables[device] = torch.as_tensor(self._acp, dtype=torch.float64).to(device)
        return self._tables[device]

    def timesteps(self, num_steps: int, spacing: str = "leading", offset: int | None = None) -> list[int]:
        """The N sampling timesteps, largest first: ``[t_{N-1}, ..., t_0]``.

        ``leading`` with offset 1 is the jump sampling of SE2P App. C
        (N=10 → 901, 801, ..., 1; N=1000 → 999, ..., 0); all three spacings follow
        diffusers' ``set_timesteps``.
        """
        return timesteps(num_steps, self.T, spacing, self.steps_offset if offset is None else offset)


def timesteps(num_steps: int, T: int = 1000, spacing: str = "leading", offset: int = 1) -> list[int]:
    """diffusers' timestep spacings (``DDPMScheduler.set_timesteps``), largest first."""
    N = num_steps
    if not 1 <= N <= T:
        raise ValueError(f"number of steps must be in 1..{T}, got {N}")
    if spacing == "leading":
        # The offset (1 in SE2P App. C) shrinks only where the grid would pass T - 1 (N > T/2).
        offset = min(offset, T - 1 - (N - 1) * (T // N))
        ts = (np.arange(0, N) * (T // N)).round()[::-1].astype(np.int64) + offset
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / N)).astype(np.int64) - 1
    elif spacing == "linspace":
        ts = np.linspace(0, T - 1, N).round()[::-1].astype(np.int64)
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose from {SPACINGS}")
    if ts[0] > T - 1:
        raise ValueError(f"{N} steps with offset {offset} reach timestep {ts[0]} > {T - 1}")
    return [int(t) for t in ts]


def default_schedule() -> Schedule:
    """The DDPM schedule of Ho et al. (linear 1e-4 .. 0.02, T = 1000): the `gmm` model's."""
    return Schedule(betas=make_betas("linear", 1e-4, 0.02, 1000))
