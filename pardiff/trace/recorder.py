"""The in-run side of the trace: one Recorder per rank.

Every compute and every message goes through ``Recorder.record``; it keeps
per-(kind, label) totals always (for reports) and writes rows when a trace file
was asked for. The clock is pluggable: wall time aligned to rank 0 for real runs,
a virtual clock for the simulator.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

from .format import EVENT_DTYPE

_FIELDS = EVENT_DTYPE.names
_DEFAULTS = dict(step=-1, iter=-1, t=-1, t_min=None, peer=-1, tag=-1, seq=-1, nbytes=0, batch=0,
                 path="", t_ready=None)


class Recorder:
    def __init__(self, rank: int, writer=None, clock=time.perf_counter, epoch: float = 0.0):
        self.rank = rank
        self.writer = writer          # a PartWriter, or None when no trace file was asked for
        self.clock = clock
        self.epoch = epoch            # local clock reading that is t = 0 for every rank
        self.totals = defaultdict(lambda: [0, 0.0, 0, 0])   # (kind, label) -> [count, seconds, bytes, batch]
        self.waiting = 0.0            # seconds receives spent before their message was there

    def now(self) -> float:
        return self.clock() - self.epoch

    def record(self, kind: str, label: str, line: str, t_start: float, t_end: float, **fields) -> None:
        total = self.totals[(kind, label)]
        total[0] += 1
        total[1] += t_end - t_start
        total[2] += fields.get("nbytes", 0)
        total[3] += fields.get("batch", 0)
        if fields.get("t_ready") is not None:
            self.waiting += fields["t_ready"] - t_start
        if self.writer is None:
            return
        values = dict(_DEFAULTS, kind=kind, label=label, line=line, t_start=t_start, t_end=t_end)
        values.update(fields)
        if values["t_min"] is None:
            values["t_min"] = values["t"]
        if values["t_ready"] is None:
            values["t_ready"] = t_start
        for name in ("kind", "label", "line", "path"):
            values[name] = values[name].encode()
        self.writer.append(tuple(values[name] for name in _FIELDS))

    @contextmanager
    def span(self, kind: str, label: str, line: str, **fields):
        """Record the enclosed block as one event."""
        t_start = self.now()
        yield
        self.record(kind, label, line, t_start, self.now(), **fields)

    def count(self, kind: str, label: str | None = None) -> int:
        return sum(v[0] for (k, l), v in self.totals.items() if k == kind and label in (None, l))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
