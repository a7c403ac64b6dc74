"""The in-run side of the trace: one Recorder per rank.

Every compute and every message goes through ``Recorder.record``; it keeps
per-(kind, label) totals always (for reports) and writes rows when a trace file
was asked for. The clock is pluggable: wall time aligned to rank 0 for real runs,
a virtual clock for the simulator.

On a GPU rank that writes a trace, ``compute`` and ``host`` spans are timed with CUDA
events instead of the host clock (``Recorder.gpu_timing``): the span records an event
on the stream before and after its work, and its row is resolved later, when the GPU
has passed both, onto the same clock through an anchor (an event whose host time is
known). So are messages whose transport is ordered on the stream (NCCL: ``mark`` and
``record_marks``), which the host does not wait for either. So tracing never makes the
host wait for the GPU, except once a second at most (or per 256 pending rows), to renew
the anchor: the two clocks drift apart slowly, and CUDA reports event intervals in
float32 milliseconds. A row's times are when the GPU ran the work; its ``t_ready`` is
when the host issued it. Rows stay in the order they were recorded.
"""
from __future__ import annotations

import sys
import time
from collections import defaultdict, deque
from contextlib import contextmanager

import torch

from .format import EVENT_DTYPE

_FIELDS = EVENT_DTYPE.names
_DEFAULTS = dict(step=-1, iter=-1, t=-1, t_min=None, peer=-1, tag=-1, seq=-1, nbytes=0, batch=0,
                 path="", t_ready=None)


GPU_TIMED = ("compute", "host")   # span kinds timed with CUDA events on a GPU rank
RESOLVE_ROWS = 256                # GPU-timed rows waiting for their events before the recorder waits for the GPU
RESOLVE_SECONDS = 1.0             # ... or the age of the anchor; each wait renews the anchor


class Recorder:
    def __init__(self, rank: int, writer=None, clock=time.perf_counter, epoch: float = 0.0):
        self.rank = rank
        self.writer = writer          # a PartWriter, or None when no trace file was asked for
        self.clock = clock
        self.epoch = epoch            # local clock reading that is t = 0 for every rank
        self.totals = defaultdict(lambda: [0, 0.0, 0, 0])   # (kind, label) -> [count, seconds, bytes, batch]
        self.waiting = 0.0            # seconds receives spent before their message was there
        self.gpu = None               # the CUDA device whose spans are timed with events (gpu_timing)
        self._queue = deque()         # rows in recorded order, from the first whose GPU events are pending
        self._anchor = None           # (CUDA event, clock reading when the GPU passed it)
        # the CUDA calls, replaceable by fakes in tests that have no GPU
        self._event = lambda: torch.cuda.Event(enable_timing=True)
        self._synchronize = torch.cuda.synchronize

    def now(self) -> float:
        return self.clock() - self.epoch

    def gpu_timing(self, device: torch.device) -> None:
        """Time this rank's compute and host spans with CUDA events on ``device`` (module doc)."""
        self.gpu = device
        self._reanchor()

    def _reanchor(self, synchronized: bool = False) -> None:
        if not synchronized:
            self._synchronize(self.gpu)
        event = self._event()
        event.record()
        event.synchronize()
        self._anchor = (event, self.clock())

    def _gpu_time(self, event) -> float:
        anchor, at = self._anchor
        return at + anchor.elapsed_time(event) / 1e3 - self.epoch

    def _resolve(self, block: bool) -> None:
        """Hand queued rows on in order, as far as their GPU events are done (all, if ``block``)."""
        if block:
            self._synchronize(self.gpu)
        while self._queue:
            row = self._queue[0]
            if row[0] == "gpu":
                _, start, end, issued, kind, label, line, fields = row
                if not (block or end.query()):
                    break
                t_start = max(self._gpu_time(start), issued)     # the anchor is good to a few µs
                t_end = max(self._gpu_time(end), t_start)
                # a message's t_ready keeps its meaning (NCCL has no probe: its start), whatever
                # the host clock said
                row = (kind, label, line, t_start, t_end,
                       dict(fields, t_ready=issued if kind in GPU_TIMED else t_start))
            self._queue.popleft()
            self._emit(*row)
        if block:
            self._reanchor(synchronized=True)

    def flush(self) -> None:
        """Wait for the GPU work of queued rows and hand them on (before totals are read)."""
        if self._queue:
            self._resolve(block=True)

    def record(self, kind: str, label: str, line: str, t_start: float, t_end: float, **fields) -> None:
        if self._queue:       # behind rows whose GPU events are pending: keep the order
            self._queue.append((kind, label, line, t_start, t_end, fields))
            self._resolve(block=False)
        else:
            self._emit(kind, label, line, t_start, t_end, fields)

    def _emit(self, kind: str, label: str, line: str, t_start: float, t_end: float, fields: dict) -> None:
        total = self.totals[(kind, label)]
        total[0] += 1
        total[1] += t_end - t_start
        total[2] += fields.get("nbytes", 0)
        total[3] += fields.get("batch", 0)
        if kind == "recv" and fields.get("t_ready") is not None:
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

    def mark(self, on_gpu: bool = False):
        """A point on this rank's time line, for ``record_marks``: the clock now, or with
        ``on_gpu`` on a GPU-timed rank, (an event recorded now on the stream, the clock now)."""
        if not (on_gpu and self.gpu is not None):
            return self.now()
        issued = self.now()
        event = self._event()
        event.record()
        return event, issued

    def record_marks(self, kind: str, label: str, line: str, start, end, **fields) -> None:
        """Record an event between two ``mark``s: on the clock, or, for marks on the GPU, when
        the GPU passed them (resolved later; the host does not wait)."""
        if not isinstance(start, tuple):
            self.record(kind, label, line, start, end, **fields)
            return
        (start_event, issued), (end_event, _) = start, end
        self._queue.append(("gpu", start_event, end_event, issued, kind, label, line, fields))
        anchor_age = self.clock() - self._anchor[1]
        self._resolve(block=len(self._queue) >= RESOLVE_ROWS or anchor_age > RESOLVE_SECONDS)

    @contextmanager
    def span(self, kind: str, label: str, line: str, **fields):
        """Record the enclosed block as one event (on a GPU-timed rank, compute and host spans
        are its GPU work: module doc)."""
        on_gpu = kind in GPU_TIMED
        start = self.mark(on_gpu)
        yield
        self.record_marks(kind, label, line, start, self.mark(on_gpu), **fields)

    def count(self, kind: str, label: str | None = None) -> int:
        self.flush()
        return sum(v[0] for (k, l), v in self.totals.items() if k == kind and label in (None, l))

    def close(self, wait_for_gpu: bool = True) -> None:
        """Hand on every row and close the part file. ``wait_for_gpu=False`` (a rank that failed:
        its GPU may be broken or blocked) keeps only the rows whose GPU work is done."""
        try:
            if wait_for_gpu:
                self.flush()
            elif self._queue:
                self._resolve(block=False)
                dropped = 0
                for row in self._queue:     # keep the host-timed rows (done), drop unfinished GPU work
                    if row[0] == "gpu":
                        dropped += 1
                    else:
                        self._emit(*row)
                self._queue.clear()
                if dropped:
                    sys.stderr.write(f"pardiff: rank {self.rank}: {dropped} trace rows dropped "
                                     "(their GPU work had not finished)\n")
        finally:
            if self.writer is not None:
                self.writer.close()
