"""The virtual backend of Comm: P ranks as threads of one process, on virtual clocks.

Data really moves (bytes are copied from sender to receiver, collectives really reduce), so
a simulated run computes the very samples a real one does; only time is modelled. Each rank
has its own clock, advanced by cost models and never by the host's wall time:

- a model evaluation (a ``compute`` span) costs the profile's time for its batch size (more
  the first time the rank evaluates that size: sim/profile.py), or,
  without a profile, the CPU time this thread spent in it (thread time, so that P threads
  sharing a few cores do not inflate each other); a ``host`` span costs the profile's time
  of one latent update of --batch samples on its device, or its thread time without one;
  the untraced code between events costs nothing (so host-heavy GPU runs are predicted short:
  docs/simulator.md);
- a send of n bytes occupies the sender for the link's α + n/β and the message arrives at
  the receiver at that same time; a receive ends at max(its clock, the arrival);
- a collective ends on every rank at max(entry clocks) + the network's price for it.

So every result is a pure function of the code, the data, the profile and the network.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from contextlib import contextmanager

import numpy as np

from ..trace.recorder import Recorder
from .base import Comm


class RankFailed(RuntimeError):
    """Raised in a waiting rank when another rank of the virtual job failed."""


class World:
    """What the virtual ranks share: mailboxes, collective slots, the network and the profile."""

    def __init__(self, size: int, network, profile=None):
        self.size, self.network, self.profile = size, network, profile
        self.lock = threading.Lock()
        self.wakeup = [threading.Condition(self.lock) for _ in range(size)]   # one per receiving rank
        self.mail = defaultdict(deque)          # (src, dst, tag) -> deque of (bytes, arrival time)
        self.slots = {}                         # collective number -> {"in": {rank: (payload, clock)}, ...}
        self.failed = False

    def notify_all(self):
        for c in self.wakeup:
            c.notify_all()

    def wait(self, rank: int, ready):
        """Block rank's thread until ``ready()`` (called under the lock) or a rank failed."""
        while not ready():
            if self.failed:
                raise RankFailed(f"rank {rank}: another rank of the simulated job failed")
            self.wakeup[rank].wait(timeout=1.0)


class VirtualClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class VirtualRecorder(Recorder):
    """A Recorder whose spans advance the rank's virtual clock by modelled costs."""

    def __init__(self, rank, writer, clock: VirtualClock, profile, warm_batches, batch: int, eval_batch: int = 0):
        super().__init__(rank, writer, clock=clock, epoch=0.0)
        self.vclock, self.profile = clock, profile
        self.seen_batches = set(warm_batches)  # the run's untimed warm-up evaluations (runtime.warm_up)
        self.batch = batch                     # --batch: what a host span's latent update is priced at
        self.eval_batch = eval_batch           # --eval-batch: an evaluation's rows reach the network in pieces

    @contextmanager
    def span(self, kind: str, label: str, line: str, **fields):
        t_start = self.now()
        cpu0 = time.thread_time()
        yield
        if kind == "compute":
            if self.profile:
                self.vclock.t += self.profile.charge(self.seen_batches, fields.get("batch", 1), self.eval_batch)
            else:
                self.vclock.t += time.thread_time() - cpu0
        elif kind == "host":
            self.vclock.t += self.profile.host_s(self.batch) if self.profile else time.thread_time() - cpu0
        self.record(kind, label, line, t_start, self.now(), **fields)


class _Arrival:
    def __init__(self, clock: VirtualClock, arrival: float):
        self.clock, self.arrival = clock, arrival

    def wait(self):
        self.clock.t = max(self.clock.t, self.arrival)


class VirtualComm(Comm):
    backend = "virtual"
    clock_kind = "virtual"

    def __init__(self, world: World, rank: int):
        self.world = world
        self.clock = VirtualClock()
        super().__init__(rank, world.size)
        k = world.network.ranks_per_node
        self.local_rank = rank % k
        self.local_size = min(k, world.size - rank // k * k)
        self._collectives = 0

    def make_recorder(self, writer, warm_batches, batch: int, eval_batch: int = 0) -> Recorder:
        return VirtualRecorder(self.rank, writer, self.clock, self.world.profile, warm_batches, batch, eval_batch)

    def measure_clock_offset(self, clock, rounds: int = 8):
        return 0.0, 0.0                      # one clock per rank, all starting at 0

    # --- point to point -------------------------------------------------------------------
    def _send_bytes(self, buf: np.ndarray, dest: int, tag: int) -> None:
        w = self.world
        self.clock.t += w.network.message(self.rank, dest, buf.nbytes)
        with w.lock:
            w.mail[(self.rank, dest, tag)].append((buf.tobytes(), self.clock.t))
            w.wakeup[dest].notify_all()

    def _isend_bytes(self, buf: np.ndarray, dest: int, tag: int):
        """The message leaves now and arrives α + n/β later; the sender is free meanwhile
        (the NIC moves it) and its wait() ends at the arrival."""
        w = self.world
        arrival = self.clock.t + w.network.message(self.rank, dest, buf.nbytes)
        with w.lock:
            w.mail[(self.rank, dest, tag)].append((buf.tobytes(), arrival))
            w.wakeup[dest].notify_all()
        return _Arrival(self.clock, arrival)

    def _probe(self, source: int, tag: int) -> None:
        w = self.world
        box = w.mail[(source, self.rank, tag)]
        with w.lock:
            w.wait(self.rank, lambda: len(box) > 0)
            self.clock.t = max(self.clock.t, box[0][1])

    def _recv_bytes(self, buf: np.ndarray, source: int, tag: int) -> None:
        w = self.world
        box = w.mail[(source, self.rank, tag)]
        with w.lock:
            w.wait(self.rank, lambda: len(box) > 0)
            data, arrival = box.popleft()
        if len(data) != buf.nbytes:
            raise RuntimeError(f"rank {self.rank}: message from rank {source} (tag {tag}) has {len(data)} bytes, "
                               f"expected {buf.nbytes}")
        buf[...] = np.frombuffer(data, dtype=np.uint8)
        self.clock.t = max(self.clock.t, arrival)

    # --- collectives ----------------------------------------------------------------------
    def _collective(self, kind: str, payload, combine, cost, timed: bool = True):
        """Every rank enters with a payload; the last one in combines them (in rank order) and
        prices the collective; all leave with the result at max(entry clocks) + cost."""
        w = self.world
        n = self._collectives
        self._collectives += 1
        with w.lock:
            slot = w.slots.setdefault(n, {"kind": kind, "in": {}, "out": None, "left": w.size})
            if slot["kind"] != kind:
                w.failed = True
                w.notify_all()
                raise RuntimeError(f"rank {self.rank}: collective #{n} is {kind} here but {slot['kind']} "
                                   "on another rank")
            slot["in"][self.rank] = (payload, self.clock.t)
            if len(slot["in"]) == w.size:
                payloads = [slot["in"][r][0] for r in range(w.size)]
                end = max(c for _, c in slot["in"].values()) + (cost() if timed else 0.0)
                slot["out"] = (combine(payloads), end)
                w.notify_all()
            w.wait(self.rank, lambda: slot["out"] is not None)
            result, end = slot["out"]
            slot["left"] -= 1
            if slot["left"] == 0:
                del w.slots[n]
        if timed:
            self.clock.t = end
        return result

    _REDUCE = {"sum": lambda a: sum(a[1:], a[0].copy()), "max": lambda a: np.maximum.reduce(a),
               "min": lambda a: np.minimum.reduce(a)}

    def _allreduce_array(self, arr: np.ndarray, op: str) -> None:
        net, size = self.world.network, self.size
        result = self._collective(f"allreduce-{op}", arr.copy(), self._REDUCE[op],
                                  lambda: net.allreduce(size, arr.nbytes))
        arr[...] = result

    def _bcast_bytes(self, buf: np.ndarray, root: int) -> None:
        net, size = self.world.network, self.size
        result = self._collective(f"bcast-{root}", buf.copy() if self.rank == root else None,
                                  lambda p: p[root], lambda: net.bcast(size, root, buf.nbytes))
        buf[...] = result

    def _barrier(self) -> None:
        net, size = self.world.network, self.size
        self._collective("barrier", None, lambda p: None, lambda: net.allreduce(size, 0))

    def allgather_object(self, obj):
        return self._collective("allgather", obj, list, None, timed=False)

    def abort(self, code: int = 1) -> None:
        with self.world.lock:
            self.world.failed = True
            self.world.notify_all()
