"""fit-iia: IIA step sizes by MMSE (Zhang, Niwa & Kleijn, ICLR 2024), the set B split over ranks.

For each step i, in order, on the trajectory of the IIA sampler itself (the step sizes of
steps < i already fitted; ``--trajectory base``: on the base sampler's):

1. the coarse step: the base update and the quantities Q_q (or EDM's vectors V_q);
2. the fine-grained integration of the same interval: the base sampler over M sub-steps at
   t_i + (t_{i+1} − t_i) m / M (Eq. 7, 14, 24; App. D.1);
3. the normal equations of  min_φ Σ_B ‖base + Σ_q φ_q Q_q − fine‖²  (Eq. 7, 8, 15, 19, 24):
   G = Σ_B Q Qᵀ, h = Σ_B Q (fine − base), c = Σ_B ‖fine − base‖², each sample's terms
   gathered to every rank by one traced allreduce (label ``gram``) and summed in sample
   order; every rank solves G φ = h itself;
4. the step taken with the fitted φ_i, so step i + 1 starts where the IIA sampler will be
   (``--trajectory base``: the base sampler's step, the other reading of "z_i").

Sample b of B starts from noise stream FIT, index b, and (with --guidance) class b mod K;
rank r holds the contiguous share b ∈ [rB/P, (r+1)B/P). Only step 3 crosses ranks, and
its sums run in sample order whatever P is, so the fit does not depend on the number of
ranks (bit for bit where the model's per-sample output does not depend on the batch).
docs/algorithms/iia.md gives the readings chosen.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import seeds
from ..iia.coeffs import Coefficients, schedule_fingerprint
from ..solvers import SOLVERS
from ..solvers.ddim import ddim_step
from ..solvers.dpmsolver import dpmpp_coefficients
from ..solvers.edm import EDM
from ..solvers.posterior import cast, predict_x0

SAMPLER = {"ddim": "iia-ddim", "ddim-cfg": "iia-ddim-cfg", "dpmsolver++": "iia-dpmsolver++",
           "biia-edm": "biia-edm", "iia-edm": "iia-edm"}
LINES = {"ddim": "IIA-Eq.7", "ddim-cfg": "IIA-Eq.8", "dpmsolver++": "IIA-Eq.24", "biia-edm": "IIA-Eq.15",
         "iia-edm": "IIA-Eq.19"}


def share(batch: int, rank: int, size: int) -> range:
    """The samples b of B that ``rank`` holds: a contiguous block, sizes differing by at most one."""
    return range(rank * batch // size, (rank + 1) * batch // size)


def initial_noise(ctx, samples: range) -> torch.Tensor:
    """z_{t_0} of each sample b: its own draw, so any split of B over ranks sees the same noises."""
    shape = (1, *ctx.model.sample_shape)
    return torch.cat([seeds.gaussian(shape, seeds.seed_for(ctx.cfg.seed, seeds.FIT, b), ctx.device)
                      for b in samples])


def accumulate(vectors: list[torch.Tensor], target: torch.Tensor) -> np.ndarray:
    """Per sample (row), [G (q×q), h (q), c] in float64 for  min_φ Σ ‖Σ_q φ_q V_q − target‖²."""
    rows = target.shape[0]
    V = torch.stack([v.reshape(rows, -1) for v in vectors], 1).to(torch.float64)      # (rows, q, D)
    y = target.reshape(rows, -1, 1).to(torch.float64)                               # (rows, D, 1)
    return torch.cat([(V @ V.transpose(1, 2)).reshape(rows, -1), (V @ y).reshape(rows, -1),
                      (y * y).sum((1, 2)).reshape(rows, 1)], 1).cpu().numpy()


RCOND = 1e-6       # relative eigenvalue cut of the normal equations (float32 inputs: ~1e-7 relative noise)


def solve(terms: np.ndarray, q: int, default: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(φ*, ‖residual‖² at ``default``, ‖residual‖² at φ*) from the per-sample normal equations
    (rows in sample order, summed here in that order).

    G sums products of float32 quantities, so a direction along which G's eigenvalue is below
    RCOND of the largest is rounding noise, not information: IIA-DDIM's two quantities are
    collinear at its first step (z_1 = α_1 x̂_0 + σ_1 ε_0), and an exact least-squares solve
    let the noise pick φ there; at |B| = 8 on gmm it chose step sizes that fit B no better but
    more than doubled the error on other noises (docs/algorithms/iia.md). Such directions (and those of a quantity that is zero
    for every sample) keep the default step sizes: φ* = default + the least-norm solution for
    the change from it, in G's units scaled to a unit diagonal."""
    sums = np.zeros(terms.shape[1])
    for row in terms:                       # a fixed order: the sum does not depend on the ranks
        sums += row
    G, h, c = sums[:q * q].reshape(q, q), sums[q * q:q * q + q], float(sums[-1])
    # scaled to a unit diagonal first, so that quantities of different sizes (EDM's y − D and
    # D − D(ỹ) at different σ) are not taken for collinear ones
    scale = np.sqrt(np.diag(G))
    scale[scale == 0] = 1.0
    change = np.linalg.lstsq(G / np.outer(scale, scale), (h - G @ default) / scale, rcond=RCOND)[0]
    phi = default + change / scale
    residual = lambda p: max(c - 2 * p @ h + p @ G @ p, 0.0)   # noqa: E731  (rounding can dip below 0)
    return phi, residual(default), residual(phi)


class Fit:
    """The step-by-step fit, shared by the grid samplers and the EDM family."""

    def __init__(self, ctx, solver):
        self.ctx, self.solver = ctx, solver
        cfg = ctx.cfg
        self.samples = share(cfg.batch, ctx.comm.rank, ctx.comm.size)
        self.labels = None
        if cfg.guidance is not None:           # the guided sampler is fitted over the classes as well
            K = ctx.model.num_classes
            self.labels = torch.tensor([b % K for b in self.samples], dtype=torch.long)
        self.line = LINES[cfg.solver]
        self.elements = cfg.batch * int(np.prod(ctx.model.sample_shape))   # |B| · D: residuals per element
        self.base_residual = np.full(solver.S, np.nan)
        self.fitted_residual = np.full(solver.S, np.nan)

    def eps(self, x, t, line: str, step: int):
        return self.ctx.eps(x, t, line=line, step=step, labels=self.labels)

    def fit_step(self, i: int, vectors: list, target: torch.Tensor, default: np.ndarray) -> None:
        """Sum the normal equations over the ranks, solve, and keep φ_i in the solver."""
        q = len(default)
        vectors = vectors + [torch.zeros_like(target)] * (q - len(vectors))   # quantities not there yet
        # Every rank fills its own samples' rows of a |B|-row table, zero elsewhere; the sum over
        # ranks adds each entry to zeros only, so all ranks get every sample's terms exactly.
        terms = torch.zeros(self.ctx.cfg.batch, q * q + q + 1, dtype=torch.float64)
        with self.ctx.host("normal-equations", f"{self.line}:gram", step=i):
            terms[self.samples.start:self.samples.stop] = torch.from_numpy(accumulate(vectors, target))
        self.ctx.comm.allreduce(terms, "sum", label="gram", line=f"{self.line}:sum", step=i)
        phi, base, fitted = solve(terms.numpy(), q, default)
        self.solver.set_step_size(i, phi)
        self.base_residual[i] = base / self.elements
        self.fitted_residual[i] = fitted / self.elements


class GridFit(Fit):
    """IIA-DDIM (Eq. 7, Eq. 25), IIA-DDIM for guidance (Eq. 8), IIA-DPM-Solver++ (Eq. 24)."""

    def end_time(self) -> float:
        """The (fractional) timestep of the clean end: −1 where ᾱ = 1 there, else 0."""
        return -1.0 if self.solver.final_alpha_bar() == 1.0 else 0.0

    def fine(self, x, eps, i: int, x0_prev) -> torch.Tensor:
        """The base sampler over M sub-steps of [t_i, t_{i+1}], ε at t_i reused from the coarse step."""
        solver, M = self.solver, self.ctx.cfg.fine
        t0 = float(solver.timesteps[i])
        t1 = float(solver.timesteps[i + 1]) if i + 1 < solver.S else self.end_time()
        times = [t0 + (t1 - t0) * m / M for m in range(M + 1)]
        abar = [solver.alpha_bars[i]] + [solver.schedule.alpha_bar_at(t) for t in times[1:-1]] \
            + [solver.alpha_bars[i + 1]]
        dpm = solver.name == "iia-dpmsolver++"
        clip = solver.schedule.clip if solver.clips else None
        a_prev = solver.alpha_bars[i - 1] if (dpm and x0_prev is not None) else None
        for m in range(M):
            if m > 0:
                eps = self.eps(x, torch.tensor([times[m]], dtype=torch.float64), f"{self.line}:fine", i)
            x0 = predict_x0(x, eps, abar[m], clip)
            if dpm:          # DPM-Solver++(2M) on the fine grid, its history the previous (fine) x̂
                c_x, c_d0, c_d1 = dpmpp_coefficients(a_prev, abar[m], abar[m + 1])
                x_next = c_x * x + c_d0 * x0 + (c_d1 * (x0 - x0_prev) if a_prev is not None else 0)
                a_prev, x0_prev = abar[m], x0
            else:
                x_next = ddim_step(x0, eps, abar[m + 1], x)
            x = x_next
        return x

    def run(self) -> None:
        solver = self.solver
        x = initial_noise(self.ctx, self.samples)
        history = None
        for i, t in enumerate(solver.timesteps):
            eps = self.eps(x, t, f"{self.line}:coarse", i)
            j = solver.rows(i, x)
            base, quantities, history_next = solver.base_and_quantities(x, eps, j, history)
            if i in solver.fitted_steps:
                x0_prev = history[:, 0] if history is not None else None
                target = self.fine(x, eps, i, x0_prev) - base
                self.fit_step(i, quantities, target, np.zeros(solver.phi.shape[1]))
            with self.ctx.host("step", f"{self.line}:step", step=i):
                if self.ctx.cfg.trajectory == "base":
                    x, history = base, history_next
                else:
                    x, history = solver.step(x, eps, i, history)


class EDMFit(Fit):
    """BIIA-EDM (Eq. 15, Alg. 2) and IIA-EDM (Eq. 19, Alg. 1)."""

    def fine(self, y, D, i: int) -> torch.Tensor:
        """Δ_fg(y_i) of Eq. 14: Heun over M sub-steps uniform in σ̃, D(y_i; σ̃_i) reused."""
        solver, M = self.solver, self.ctx.cfg.fine
        s0, s1 = solver.sigmas[i], solver.sigmas[i + 1]
        sig = [s0 + (s1 - s0) * m / M for m in range(M + 1)]
        start = y
        for m in range(M):
            if m > 0:
                D = solver.denoise(self.ctx, y, sig[m], line=f"{self.line}:fine", step=i, labels=self.labels)
            d = (y - D) / sig[m]
            y_euler = y + (sig[m + 1] - sig[m]) * d
            D_next = solver.denoise(self.ctx, y_euler, sig[m + 1], line=f"{self.line}:fine", step=i,
                                    labels=self.labels)
            y = y + (sig[m + 1] - sig[m]) * (0.5 * d + 0.5 * (y_euler - D_next) / sig[m + 1])
        return y - start

    def run(self) -> None:
        solver = self.solver
        y = solver.sigmas[0] * initial_noise(self.ctx, self.samples)
        default = solver.default_step_sizes()
        recent = []
        for i in range(solver.S):
            D, y_euler, D_next = solver.heun_terms(self.ctx, y, i, labels=self.labels)
            if D_next is None:
                return
            recent = [solver.quantities(i, y, D, y_euler, D_next)] + recent[:solver.history]
            if i in solver.fitted_steps:
                self.fit_step(i, solver.design(i, recent), self.fine(y, D, i), default[i])
            with self.ctx.host("step", f"{self.line}:step", step=i):
                phi = default[i] if self.ctx.cfg.trajectory == "base" else solver.phi[i]
                y = y + solver.increment(i, recent, phi)


def fit_iia(ctx) -> Coefficients:
    """Fit the step sizes of ``--solver`` on ``--steps`` with M = ``--fine`` over |B| = ``--batch``."""
    cfg, model = ctx.cfg, ctx.model
    name = SAMPLER[cfg.solver]
    if name in ("biia-edm", "iia-edm"):
        solver = SOLVERS[name](ctx.schedule, cfg.steps, history=cfg.history)      # EDM's own step sizes
        fit = EDMFit(ctx, solver)
    else:
        columns = cfg.quantities if name == "iia-ddim" else 2 if name == "iia-dpmsolver++" else 1
        solver = SOLVERS[name](ctx.schedule, cfg.steps, np.zeros((cfg.steps, columns)))   # the base sampler
        fit = GridFit(ctx, solver)
    fit.run()
    result = Coefficients(solver=cfg.solver, coefficients=solver.phi, grid=np.asarray(solver.grid, dtype=np.float64),
                          model=cfg.model, sample_shape=tuple(model.sample_shape),
                          schedule=schedule_fingerprint(model.schedule), fine=cfg.fine,
                          history=cfg.history if isinstance(solver, EDM) else 0, batch=cfg.batch, seed=cfg.seed,
                          guidance=cfg.guidance, residual_base=fit.base_residual,
                          residual_fitted=fit.fitted_residual)
    ctx.report.update(report(result, solver))
    return result


def report(result: Coefficients, solver) -> dict:
    """The --report entries: averaged residuals (the paper's Fig. 4 / Tables 4, 7) and per step."""
    fitted = ~np.isnan(result.residual_base)
    per_step = []
    for i in range(result.steps):
        per_step.append({"step": i, "t": float(solver.timesteps[i]), "grid": float(result.grid[i]),
                         "fitted": bool(fitted[i]), "coefficients": [float(v) for v in result.coefficients[i]],
                         "residual_base": float(result.residual_base[i]) if fitted[i] else None,
                         "residual_fitted": float(result.residual_fitted[i]) if fitted[i] else None})
    return {"solver": result.solver, "sampler": SAMPLER[result.solver], "steps": result.steps,
            "fine": result.fine, "history": result.history, "B": result.batch,
            "residual_base": float(np.mean(result.residual_base[fitted])) if fitted.any() else None,
            "residual_fitted": float(np.mean(result.residual_fitted[fitted])) if fitted.any() else None,
            "coefficients": result.coefficients.tolist(), "per_step": per_step}
