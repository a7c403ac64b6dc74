"""The sliding window of the parallel-in-time solvers (ParaSolver, ParaDiGMS), over MPI ranks.

Both solve for the points X̂_0 .. X̂_N of a sampling trajectory (point 0 is the noise,
point N the sample; point n sits at grid index n·L of the sampler, L steps per
subinterval) by iterating, over a window of p subproblem starts [n, n+p):

    Φ_i = L sampler steps from X̂_i        (batched: every start advances together)
    X̂_{i+1} <- X̂_n + Σ_{j=n..i} (Φ_j − X̂_j)       (the cumulative drift, ParaSolver Eq. 13)

then sliding the window to the first point that moved more than the tolerance.

Layout (docs/algorithms/parasolver.md): point i belongs to rank (i // b) mod R, blocks of
b = ⌈window / (4R)⌉ consecutive points dealt round-robin. Sliding never moves a point
between ranks: only the s new points that enter at the far end are sent, by the rank
that initialises them, to their owners. Four blocks per rank in a full window keep the
ranks within one block of each other also while the window shrinks at the end of the
trajectory, for a chain of about 4R hops. The cumulative sum runs as that chain in window
order: each rank receives the running value X̂_a at the start of its run of points, adds
its drifts, and sends the value after its run to the next owner (label ``drift``). Each
rank adds its drifts in the same order a single rank would, so the numbers do not depend
on the number of ranks.
"""
from __future__ import annotations

import math

import torch

from .. import seeds
from ..solvers.posterior import posterior_variance

BLOCKS_PER_RANK = 4


def row_counts(N: int, window: int, rank: int, size: int) -> list[int]:
    """The distinct numbers of subproblem starts ``rank`` evaluates together in one iteration,
    over every window [n, n + min(window, N − n)) the solvers can visit (what the runtime's
    warm-up evaluates: runtime.warm_batches)."""
    p_max = min(window, N)
    block = math.ceil(p_max / (BLOCKS_PER_RANK * size))
    counts = set()
    for n in range(N):
        p = min(p_max, N - n)
        counts.add(sum(1 for i in range(n, n + p) if (i // block) % size == rank))
    return sorted(counts - {0})


class Window:
    """This rank's points and the distributed steps of one iteration."""

    def __init__(self, ctx, solver, subintervals: int, window: int, lines: dict):
        self.ctx, self.comm, self.solver = ctx, ctx.comm, solver
        self.N = subintervals
        self.L = solver.S // subintervals                  # sampler steps per subinterval
        self.p_max = min(window, subintervals)
        self.block = math.ceil(self.p_max / (BLOCKS_PER_RANK * self.comm.size))
        self.lines = lines
        self.x: dict[int, torch.Tensor] = {}               # point -> X̂_i, for the points this rank owns
        self.h: dict[int, torch.Tensor] = {}               # point -> x̂_0 of the sampler step before it
        # σ_i² of Eq. 14: the DDPM posterior variance from point i to i + 1 (the last repeats).
        var = [solver.variance(i * self.L, (i + 1) * self.L) for i in range(self.N)]
        if ctx.cfg.last_variance == "authors":
            # reading 6, the authors' code: the last subinterval ends at timestep 0's ᾱ, not at ᾱ = 1 (σ² = 0)
            var[-1] = float(posterior_variance(solver.alpha_bars[(self.N - 1) * self.L], solver.schedule.alpha_bar(0)))
        self.var = var + var[-1:]
        self.records: list[dict] = []                       # per iteration: this rank's residuals

    # --- layout ------------------------------------------------------------------------
    def owner(self, i: int) -> int:
        return (i // self.block) % self.comm.size

    def runs(self, n: int, p: int) -> list[tuple[int, int]]:
        """This rank's subproblem starts in [n, n+p) as maximal runs [a, b), in window order."""
        mine = [i for i in range(n, n + p) if self.owner(i) == self.comm.rank]
        runs = []
        for i in mine:
            if runs and runs[-1][1] == i:
                runs[-1] = (runs[-1][0], i + 1)
            else:
                runs.append((i, i + 1))
        return runs

    def grid(self, i: int) -> int:
        return i * self.L

    # --- messages of points -------------------------------------------------------------
    def send_point(self, x, h, dest, label, line, k):
        """A point's latent, with its sampler history where the sampler keeps one."""
        message = torch.cat([x.unsqueeze(1), h], 1) if self.solver.history_slots else x
        self.comm.send(message, dest, label=label, line=line, iter=k)

    def recv_point(self, source, label, line, k) -> tuple[torch.Tensor, torch.Tensor | None]:
        slots = self.solver.history_slots
        B, *shape = self.ctx.shape
        buf = torch.empty((B, 1 + slots, *shape) if slots else self.ctx.shape, dtype=torch.float32,
                          device=self.ctx.device)
        self.comm.recv(buf, source, label=label, line=line, iter=k)
        return (buf[:, 0], buf[:, 1:]) if slots else (buf, None)

    def scatter_points(self, indices, values: dict | None, source: int, line: str, k: int) -> None:
        """Rank ``source`` holds ``values`` (point -> latent) for ``indices``; each point goes to
        its owner (label ``points``). Every rank passes the same ``indices``. New points have
        no sampler history yet."""
        for i in indices:
            dest = self.owner(i)
            if self.comm.rank == source and dest == source:
                self.x[i] = values[i]
            elif self.comm.rank == source:
                self.comm.send(values[i], dest, label="points", line=line, iter=k)
            elif self.comm.rank == dest:
                self.x[i] = self.comm.recv(self.ctx.empty(), source, label="points", line=line, iter=k)
            if self.comm.rank == dest:
                self.h.pop(i, None)

    def scatter_copies(self, indices, value: torch.Tensor | None, source: int, line: str, k: int) -> None:
        """Every point of ``indices`` gets a copy of ``value`` (held by ``source``): one message
        per owning rank, not per point (label ``latent``)."""
        owners = sorted({self.owner(i) for i in indices})
        if self.comm.rank == source:
            for dest in owners:
                if dest != source:
                    self.comm.send(value, dest, label="latent", line=line, iter=k)
        elif self.comm.rank in owners:
            value = self.comm.recv(self.ctx.empty(), source, label="latent", line=line, iter=k)
        for i in indices:
            if self.owner(i) == self.comm.rank:
                self.x[i] = value
                self.h.pop(i, None)

    # --- one iteration ------------------------------------------------------------------
    def solve_subproblems(self, n: int, p: int, k: int, clean: bool = True):
        """Lines 4-5: Φ for every subproblem start this rank owns, as one batch per sampler
        step. Returns {i: Φ_i − X̂_i}, {i: x̂_0 at the first step}, {i: x̂_0 at the last step}
        (empty unless ``clean``), {i: the sampler history after the last step (for point i + 1)}."""
        starts = [i for a, b in self.runs(n, p) for i in range(a, b)]
        if not starts:
            return {}, {}, {}, {}
        B = self.ctx.cfg.batch
        x = torch.cat([self.x[i] for i in starts])
        solver = self.solver
        history = has_history = None
        if solver.history_slots:
            history = torch.cat([self.h[i] if i in self.h else self._no_history() for i in starts])
            has_history = torch.tensor([i in self.h for i in starts]).repeat_interleave(B)
        x0_first = x0_last = None
        for l in range(self.L):
            g = [self.grid(i) + l for i in starts]                       # each row's sampler step
            t = torch.tensor([solver.timesteps[j] for j in g]).repeat_interleave(B)
            j = torch.tensor(g).repeat_interleave(B)
            eps = self.ctx.eps(x, t, line=self.lines["eval"], iter=k)
            noise = None
            if solver.stochastic:
                noise = torch.cat([self.ctx.noise(seeds.STEP, solver.S - 1 - jj) for jj in g])
            with self.ctx.host("step", self.lines["eval"], iter=k):
                if clean and l == 0:
                    x0_first = solver.predict_x0(x, eps, j)
                if clean and l == self.L - 1:
                    x0_last = x0_first if l == 0 else solver.predict_x0(x, eps, j)
                x, history = solver.step(x, eps, j, history, has_history, noise)
            has_history = None                                           # every row has one now
        with self.ctx.host("drift", self.lines["delta"], iter=k):
            delta = {i: phi - self.x[i] for i, phi in zip(starts, x.split(B))}
        hist = dict(zip(starts, history.split(B))) if history is not None else {}
        if not clean:
            return delta, {}, {}, hist
        return delta, dict(zip(starts, x0_first.split(B))), dict(zip(starts, x0_last.split(B))), hist

    def _no_history(self) -> torch.Tensor:
        B, *shape = self.ctx.shape
        return torch.zeros(B, self.solver.history_slots, *shape, device=self.ctx.device)

    def cumulative_update(self, n: int, p: int, delta: dict, history: dict, k: int):
        """Line 6 (Eq. 13): X̂_{i+1} = X̂_n + Σ_{j=n..i} Δ_j, as a chain over ranks in window
        order. Returns {i: (new X̂_i, its new sampler history or None)} for the points this
        rank owns among n+1 .. n+p, and the new X̂_{n+p} where this rank computed it."""
        rank, line = self.comm.rank, self.lines["drift"]
        new, end_value = {}, None
        for a, b in self.runs(n, p):
            if a == n:
                value, hist = self.x[n], self.h.get(n)
            else:
                value, hist = self.recv_point(self.owner(a - 1), "drift", line, k)
                new[a] = (value, hist)
            with self.ctx.host("drift", line, iter=k):
                for i in range(a, b):
                    value = value + delta[i]
                    if i + 1 < b:
                        new[i + 1] = (value, history.get(i))
            hist = history.get(b - 1)
            if b == n + p:
                end_value = (value, hist)
            if self.owner(b) != rank:
                self.send_point(value, hist, self.owner(b), "drift", line, k)
            else:
                new[b] = (value, hist)              # only b = n+p can be this rank's own
        last, target = n + p - 1, n + p
        if self.owner(target) == rank and self.owner(last) != rank:
            new[target] = self.recv_point(self.owner(last), "drift", line, k)
        return new, end_value

    def first_unconverged(self, n: int, p: int, new: dict, tol: float, k: int) -> int:
        """Line 7 (Eq. 14): the first point of n+1 .. n+p whose change exceeds the tolerance,
        (1/D)‖X̂^(k+1) − X̂^(k)‖² > δ² σ², for any sample; n+p if none. One MIN all-reduce.

        The changes of all this rank's points are reduced on the device together and read in
        one transfer: the iteration's only host sync, the one the algorithm's decision needs."""
        points = [i for i in sorted(new) if i != n]
        # a multistep sampler's point carries the previous step's quantities too: it has
        # converged only when they have settled as well (docs/algorithms/parasolver.md)
        known = [i for i in points if i in self.h] if self.solver.history_slots else []
        parts = [_mean_squares([new[i][0] for i in points], [self.x[i] for i in points])]
        if known:
            parts.append(_mean_squares([new[i][1] for i in known], [self.h[i] for i in known]))
        values = torch.cat(parts).tolist()
        change = dict(zip(points, values))
        if self.solver.history_slots:
            settled = dict(zip(known, values[len(points):]))
            # reading 7: a point without a previous x̂_0 (just made at Line 9) is unsettled, or settled on request
            missing = 0.0 if self.ctx.cfg.missing_history == "settled" else math.inf
            change = {i: max(c, settled.get(i, missing)) for i, c in change.items()}
        residuals, first = {}, n + p
        for i in points:
            # None: no finite residual (σ_i = 0 and a change, or an unsettled new point without history)
            residuals[i] = math.sqrt(change[i] / self.var[i]) if self.var[i] > 0 and math.isfinite(change[i]) \
                else (0.0 if change[i] == 0 else None)
            if change[i] > tol ** 2 * self.var[i] and i < first:
                first = i
        scripted = getattr(self.comm, "scripted_strides", None)
        if scripted is not None:        # pardiff simulate --strides: a measured run's decision, priced here
            first = n + scripted[k]
        self.records.append({"iter": k, "residuals": residuals})
        f = torch.tensor([first], dtype=torch.int64)
        self.comm.allreduce(f, "min", label="residual", line=self.lines["stride"], iter=k)
        return int(f[0])

    def commit(self, new: dict) -> None:
        """The new values become this rank's points."""
        for i, (x, h) in new.items():
            self.x[i] = x
            if h is not None:
                self.h[i] = h

    def drop_before(self, n: int) -> None:
        """Points before the window start are final and no longer needed (except point N)."""
        for i in [i for i in self.x if i < n]:
            del self.x[i]
            self.h.pop(i, None)

    def gather_records(self) -> list[dict]:
        """Every rank's residuals of every iteration, merged on each rank (after the run)."""
        merged = {}
        for records in self.comm.allgather_object(self.records):
            for rec in records:
                merged.setdefault(rec["iter"], {}).update(rec["residuals"])
        return [{"iter": k, "residuals": [merged[k][i] for i in sorted(merged[k])]} for k in sorted(merged)]

    def report(self, iterations: list[dict]) -> None:
        """Per-iteration window, stride and residuals for --report (the columns of ParaSolver's
        Tables 1-5); gathered after the run."""
        residuals = {r["iter"]: r["residuals"] for r in self.gather_records()}
        for it in iterations:
            it["residuals"] = residuals.get(it["iter"], [])
        self.ctx.report.update(iterations=len(iterations), subintervals=self.N, steps_per_subinterval=self.L,
                               per_iteration=iterations)

    def result(self, line: str, k: int) -> torch.Tensor | None:
        """X̂_N, sent by its owner to rank 0."""
        owner = self.owner(self.N)
        if self.comm.rank == owner == 0:
            return self.x[self.N]
        if self.comm.rank == owner:
            self.comm.send(self.x[self.N], 0, label="latent", line=line, iter=k)
        elif self.comm.rank == 0:
            return self.comm.recv(self.ctx.empty(), owner, label="latent", line=line, iter=k)
        return None


def _mean_squares(new: list[torch.Tensor], old: list[torch.Tensor]) -> torch.Tensor:
    """max over samples of (1/D)‖new − old‖² for each pair, as one float64 tensor on the device.

    One batched reduction for all pairs: issuing a few kernels per point made a small model's
    iterations wait on the host. Squares are summed in float64, so that no bit a tolerance test
    could see depends on how many pairs are reduced together (that changes with the number of
    ranks, and with it a reduction's order)."""
    if not new:
        return torch.zeros(0, dtype=torch.float64)
    diff = torch.stack(new) - torch.stack(old)
    return diff.double().pow(2).reshape(len(new), new[0].shape[0], -1).mean(2).amax(1)
