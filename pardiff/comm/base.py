"""Comm: the one message-passing abstraction every algorithm talks to.

Algorithms call ``send`` / ``recv`` / ``allreduce`` / ``bcast`` / ``barrier`` with
the label of what moves and the pseudocode line that moves it; every call becomes
a trace event. Backends (MPI today; the simulator's virtual one later) supply only
the raw byte transport (the ``_``-prefixed methods).

Tensors travel as raw bytes: a contiguous CPU tensor is handed to the transport
zero-copy through a numpy ``uint8`` view (bf16 included, which numpy cannot
represent); a GPU tensor is staged through host memory. The event's ``path``
field says which (``host`` or ``staged``).
"""
from __future__ import annotations

import zlib
from collections import defaultdict

import numpy as np
import torch

from ..trace.recorder import Recorder

# One MPI tag per kind of payload, so messages of different kinds never match each other.
TAGS = {"latent": 10, "x_pred": 11, "seed": 12, "drift": 13, "points": 14, "residual": 15, "eps": 16}
_CLOCK_TAG = 32000


def tag_for(label: str) -> int:
    return TAGS.get(label) or 1000 + zlib.crc32(label.encode()) % 30000


def byte_view(tensor: torch.Tensor) -> np.ndarray:
    """A writable uint8 numpy view of a contiguous CPU tensor's memory (no copy)."""
    if not tensor.is_contiguous():
        raise ValueError("Comm needs contiguous tensors (call .contiguous() first)")
    return tensor.reshape(-1).view(torch.uint8).numpy()


class Comm:
    backend = "base"

    def __init__(self, rank: int, size: int, recorder: Recorder | None = None):
        self.rank = rank
        self.size = size
        self.recorder = recorder or Recorder(rank)
        self._seq = defaultdict(int)      # (direction, peer, tag) -> messages so far

    # --- raw transport, provided by backends (untraced) -----------------------------
    def _send_bytes(self, buf: np.ndarray, dest: int, tag: int) -> None:
        raise NotImplementedError

    def _probe(self, source: int, tag: int) -> None:
        """Block until a message from ``source`` with ``tag`` can be received."""
        raise NotImplementedError

    def _recv_bytes(self, buf: np.ndarray, source: int, tag: int) -> None:
        raise NotImplementedError

    def _allreduce_array(self, arr: np.ndarray, op: str) -> None:
        raise NotImplementedError

    def _bcast_bytes(self, buf: np.ndarray, root: int) -> None:
        raise NotImplementedError

    def _barrier(self) -> None:
        raise NotImplementedError

    def allgather_object(self, obj):
        """Setup and teardown exchange of small Python objects (not traced: not part of an algorithm)."""
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        raise NotImplementedError

    # --- traced API ----------------------------------------------------------------
    def _next_seq(self, direction: str, peer: int, tag: int) -> int:
        key = (direction, peer, tag)
        self._seq[key] += 1
        return self._seq[key] - 1

    def send(self, tensor: torch.Tensor, dest: int, *, label: str, line: str, step: int = -1, iter: int = -1):
        """Send ``tensor`` to rank ``dest``; returns when the buffer may be reused."""
        tag = tag_for(label)
        t_start = self.recorder.now()
        if tensor.device.type == "cpu":
            host, path = tensor.contiguous(), "host"
        else:
            host, path = tensor.to("cpu"), "staged"
        buf = byte_view(host)
        self._send_bytes(buf, dest, tag)
        self.recorder.record("send", label, line, t_start, self.recorder.now(), step=step, iter=iter,
                             peer=dest, tag=tag, seq=self._next_seq("send", dest, tag),
                             nbytes=buf.nbytes, path=path)

    def recv(self, out: torch.Tensor, source: int, *, label: str, line: str, step: int = -1,
             iter: int = -1) -> torch.Tensor:
        """Receive from rank ``source`` into ``out`` (shape and dtype must match the send); returns ``out``."""
        tag = tag_for(label)
        t_start = self.recorder.now()
        host = out if out.device.type == "cpu" else torch.empty(out.shape, dtype=out.dtype)
        path = "host" if host is out else "staged"
        buf = byte_view(host)
        self._probe(source, tag)
        t_ready = self.recorder.now()
        self._recv_bytes(buf, source, tag)
        if host is not out:
            out.copy_(host)
        self.recorder.record("recv", label, line, t_start, self.recorder.now(), t_ready=t_ready, step=step,
                             iter=iter, peer=source, tag=tag, seq=self._next_seq("recv", source, tag),
                             nbytes=buf.nbytes, path=path)
        return out

    def allreduce(self, tensor: torch.Tensor, op: str = "sum", *, label: str, line: str, step: int = -1,
                  iter: int = -1) -> torch.Tensor:
        """In-place reduction (``sum``, ``max`` or ``min``) across all ranks; returns ``tensor``."""
        t_start = self.recorder.now()
        host = tensor.contiguous() if tensor.device.type == "cpu" else tensor.to("cpu")
        arr = host.numpy()
        self._allreduce_array(arr, op)
        if host is not tensor:
            tensor.copy_(host)
        self.recorder.record("collective", label, line, t_start, self.recorder.now(), step=step, iter=iter,
                             nbytes=arr.nbytes, path="host" if tensor.device.type == "cpu" else "staged")
        return tensor

    def bcast(self, tensor: torch.Tensor, root: int, *, label: str, line: str, step: int = -1,
              iter: int = -1) -> torch.Tensor:
        """Broadcast ``tensor`` from ``root`` into every rank's ``tensor``; returns it."""
        t_start = self.recorder.now()
        host = tensor.contiguous() if tensor.device.type == "cpu" else tensor.to("cpu")
        buf = byte_view(host)
        self._bcast_bytes(buf, root)
        if host is not tensor:
            tensor.copy_(host)
        self.recorder.record("collective", label, line, t_start, self.recorder.now(), step=step, iter=iter,
                             peer=root, nbytes=buf.nbytes, path="host" if host is tensor else "staged")
        return tensor

    def barrier(self, *, label: str = "barrier", line: str = "") -> None:
        with self.recorder.span("collective", label, line):
            self._barrier()

    # --- clocks -----------------------------------------------------------------------
    def measure_clock_offset(self, clock, rounds: int = 8) -> tuple[float, float]:
        """(offset, rtt): this rank's clock reading minus rank 0's at the same instant.

        Rank 0 answers each other rank's pings with its clock reading; the reply of
        the fastest round trip gives the offset (Cristian's algorithm). Untraced.
        """
        ping = np.zeros(1, dtype=np.float64)
        offset, best_rtt = 0.0, 0.0
        if self.rank == 0:
            for r in range(1, self.size):
                for _ in range(rounds):
                    self._recv_bytes(ping.view(np.uint8), r, _CLOCK_TAG)
                    ping[0] = clock()
                    self._send_bytes(ping.view(np.uint8), r, _CLOCK_TAG)
        else:
            best_rtt = float("inf")
            for _ in range(rounds):
                t1 = clock()
                self._send_bytes(ping.view(np.uint8), 0, _CLOCK_TAG)
                self._recv_bytes(ping.view(np.uint8), 0, _CLOCK_TAG)
                t2 = clock()
                if t2 - t1 < best_rtt:
                    best_rtt, offset = t2 - t1, (t1 + t2) / 2 - ping[0]
        self._barrier()
        return float(offset), float(best_rtt)
