"""Comm: the one message-passing abstraction every algorithm talks to.

Algorithms call ``send`` / ``recv`` / ``allreduce`` / ``bcast`` / ``barrier`` with
the label of what moves and the pseudocode line that moves it; every call becomes
a trace event. Backends (mpi.py, torchdist.py, the simulator's virtual.py) supply
the raw transport (the ``_``-prefixed methods).

Tensors travel as raw bytes: a contiguous CPU tensor is handed to the transport
zero-copy through a numpy ``uint8`` view (bf16 included, which numpy cannot
represent); a GPU tensor goes to a CUDA-aware MPI as is, or through a pinned host
buffer (comm/staging.py), or to a rank of the same node through host memory both map
(comm/shared.py, ``--staging shared``); the torch.distributed backend (comm/torchdist.py) moves
GPU tensors over NCCL. The event's ``path`` field says which.
"""
from __future__ import annotations

import functools
import zlib
from collections import defaultdict

import numpy as np
import torch

from ..trace.recorder import Recorder
from .shared import HEADER_WORDS, INLINE
from .staging import PinnedPool, from_pinned, to_pinned

# One MPI tag per kind of payload, so messages of different kinds never match each other.
TAGS = {"latent": 10, "x_pred": 11, "seed": 12, "drift": 13, "points": 14, "residual": 15, "eps": 16}
_CLOCK_TAG = 32000


def tag_for(label: str) -> int:
    return TAGS.get(label) or 1000 + zlib.crc32(label.encode()) % 30000


@functools.lru_cache(maxsize=None)
def _numpy_has(dtype: torch.dtype) -> bool:
    """Whether numpy has an equivalent of ``dtype`` (it lacks bfloat16, float8, complex32)."""
    try:
        torch.empty(0, dtype=dtype).numpy()
        return True
    except TypeError:
        return False


def byte_view(tensor: torch.Tensor) -> np.ndarray:
    """A writable uint8 numpy view of a contiguous CPU tensor's memory (no copy)."""
    if not tensor.is_contiguous():
        raise ValueError("Comm needs contiguous tensors (call .contiguous() first)")
    if tensor.requires_grad:
        tensor = tensor.detach()
    if _numpy_has(tensor.dtype):   # one torch call, the rest numpy's (torch calls cost µs each)
        return tensor.numpy().reshape(-1).view(np.uint8)
    return tensor.reshape(-1).view(torch.uint8).numpy()


def device_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A flat uint8 view of a contiguous GPU tensor: a buffer a CUDA-aware MPI takes as is
    (mpi4py reads its ``__cuda_array_interface__``)."""
    return tensor.reshape(-1).view(torch.uint8)


class PendingSend:
    """A send in flight (``Comm.isend``); ``wait()`` completes it, traced as a ``wait`` event."""

    def __init__(self, recorder, label, line, fields, finish, on_gpu: bool):
        self._recorder, self._label, self._line = recorder, label, line
        self._fields, self._finish, self._on_gpu = fields, finish, on_gpu
        self.done = False

    def wait(self) -> None:
        if self.done:
            return
        start = self._recorder.mark(self._on_gpu)
        self._finish()
        self.done = True
        self._recorder.record_marks("wait", self._label, self._line, start, self._recorder.mark(self._on_gpu),
                                    **self._fields)


class Comm:
    backend = "base"
    cuda_aware = False      # the transport reads and writes GPU memory itself
    staging = "pinned"      # how GPU tensors cross a host-only transport: pinned | shared | pageable
    shared = None           # the node's shared arena (comm/shared.py) when staging is shared

    def __init__(self, rank: int, size: int, recorder: Recorder | None = None):
        self.rank = rank
        self.size = size
        self.recorder = recorder or Recorder(rank)
        self._seq = defaultdict(int)      # (direction, peer, tag) -> messages so far
        self.pinned = PinnedPool()

    # --- raw transport, provided by backends (untraced) -----------------------------
    def _send_bytes(self, buf: np.ndarray, dest: int, tag: int) -> None:
        raise NotImplementedError

    def _isend_bytes(self, buf: np.ndarray, dest: int, tag: int):
        """Start a send; returns a request with ``wait()``."""
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

    def close(self) -> None:
        """Release what the transport set up (a torch.distributed process group)."""

    # --- traced API ----------------------------------------------------------------
    def _next_seq(self, direction: str, peer: int, tag: int) -> int:
        key = (direction, peer, tag)
        self._seq[key] += 1
        return self._seq[key] - 1

    def send(self, tensor: torch.Tensor, dest: int, *, label: str, line: str, step: int = -1, iter: int = -1):
        """Send ``tensor`` to rank ``dest``; returns when the buffer may be reused."""
        self._send(tensor, dest, label, line, step, iter, blocking=True)

    def isend(self, tensor: torch.Tensor, dest: int, *, label: str, line: str, step: int = -1,
              iter: int = -1) -> PendingSend:
        """Start sending ``tensor`` to rank ``dest``; call ``.wait()`` on the result before
        reusing ``tensor``. Traced as a ``send`` event for the post and a ``wait`` event (same
        peer, tag and seq) for the completion: what happens between them overlaps the message."""
        return self._send(tensor, dest, label, line, step, iter, blocking=False)

    def _send(self, tensor, dest, label, line, step, iter, blocking: bool) -> PendingSend | None:
        tag = tag_for(label)
        on_gpu = self._stream_ordered(tensor)
        start = self.recorder.mark(on_gpu)
        path, nbytes, finish = self._post_send(tensor, dest, tag, blocking)
        fields = dict(step=step, iter=iter, peer=dest, tag=tag, seq=self._next_seq("send", dest, tag),
                      nbytes=nbytes, path=path)
        self.recorder.record_marks("send", label, line, start, self.recorder.mark(on_gpu), **fields)
        return None if blocking else PendingSend(self.recorder, label, line, fields, finish, on_gpu)

    def recv(self, out: torch.Tensor, source: int, *, label: str, line: str, step: int = -1,
             iter: int = -1) -> torch.Tensor:
        """Receive from rank ``source`` into ``out`` (shape and dtype must match the send); returns ``out``."""
        if not out.is_contiguous():
            raise ValueError("Comm needs contiguous tensors (call .contiguous() first)")
        tag = tag_for(label)
        on_gpu = self._stream_ordered(out)
        start = self.recorder.mark(on_gpu)
        path, nbytes, t_ready = self._recv_into(out, source, tag)
        self.recorder.record_marks("recv", label, line, start, self.recorder.mark(on_gpu), t_ready=t_ready, step=step,
                                   iter=iter, peer=source, tag=tag, seq=self._next_seq("recv", source, tag),
                                   nbytes=nbytes, path=path)
        return out

    def _stream_ordered(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor``'s messages are ordered on its GPU stream (NCCL), so the host does
        not wait for them and a GPU-timed trace times them with CUDA events."""
        return False

    # --- how a tensor moves (the ``path`` of its trace event) ---------------------------
    # host:       a CPU tensor, handed to the transport zero-copy
    # pinned:     a GPU tensor through a pinned host buffer (asynchronous copy on receipt)
    # shared:     a GPU tensor through the node's shared arena, MPI carrying a header (--staging shared)
    # staged:     a GPU tensor through a pageable host copy (--staging pageable; older traces)
    # cuda-aware: a GPU pointer handed to an MPI that reads GPU memory
    # nccl, gloo: torch.distributed on the same ranks (comm/torchdist.py)
    def _post_send(self, tensor: torch.Tensor, dest: int, tag: int, blocking: bool):
        """Send (``blocking``: done on return) or start sending ``tensor``; returns (path, bytes,
        finish), where ``finish()`` returns when a started send has completed and its buffer may
        be reused."""
        release, nbytes = None, tensor.numel() * tensor.element_size()
        header = self.shared.put(tensor.contiguous(), dest) if self._shared_with(tensor, dest) else None
        if header is not None and int(header[1]) == INLINE:     # no room in the shared lane: the bytes follow
            self._send_bytes(header.view(np.uint8), dest, tag)
            header = None
        if header is not None:
            buf, path = header.view(np.uint8), "shared"     # the bytes are in the arena: MPI says where
        elif tensor.device.type == "cpu":
            buf, path = byte_view(tensor.contiguous()), "host"
        elif self.cuda_aware:
            torch.cuda.current_stream(tensor.device).synchronize()      # MPI does not see CUDA streams
            buf, path = device_bytes(tensor.contiguous()), "cuda-aware"
        elif self.staging == "pageable":
            buf, path = byte_view(tensor.to("cpu")), "staged"
        else:
            pinned = to_pinned(self.pinned, tensor.contiguous())
            buf, path = pinned.array, "pinned"
            release = lambda: self.pinned.release(pinned)  # noqa: E731
        request = None
        if blocking:
            self._send_bytes(buf, dest, tag)
        else:
            request = self._isend_bytes(buf, dest, tag)

        def finish():
            if request is not None:
                request.wait()
            if release is not None:
                release()
        if blocking:
            finish()
        return path, nbytes, finish

    def _shared_with(self, tensor: torch.Tensor, peer: int) -> bool:
        """Whether ``tensor`` goes to or comes from rank ``peer`` through the shared arena (asked
        for with --staging shared, it is taken over a CUDA-aware MPI too)."""
        return self.shared is not None and tensor.device.type == "cuda" and self.shared.local(peer)

    def _recv_buffer(self, out: torch.Tensor, shared: bool):
        """(path, buffer the transport writes, what the path keeps: a host tensor, a pinned
        buffer or a shared-staging header) for receiving into ``out``."""
        if shared:
            header = np.empty(HEADER_WORDS, dtype=np.uint64)
            return "shared", header.view(np.uint8), header
        if out.device.type == "cpu":
            return "host", byte_view(out), None
        if self.cuda_aware:
            torch.cuda.current_stream(out.device).synchronize()         # no kernel still using out
            return "cuda-aware", device_bytes(out), None
        if self.staging == "pageable":
            staged = torch.empty(out.shape, dtype=out.dtype)
            return "staged", byte_view(staged), staged
        pinned = self.pinned.acquire(out.numel() * out.element_size())
        return "pinned", pinned.array, pinned

    def _recv_into(self, out: torch.Tensor, source: int, tag: int):
        """Receive into ``out``; returns (path, bytes, time the message was there to take)."""
        shared = self._shared_with(out, source)
        path, buf, kept = self._recv_buffer(out, shared)
        self._probe(source, tag)
        t_ready = self.recorder.now()
        self._recv_bytes(buf, source, tag)
        if shared and not self.shared.take(kept, source, out):     # no room in the lane: the bytes follow
            path, buf, kept = self._recv_buffer(out, shared=False)
            self._recv_bytes(buf, source, tag)
        if path == "staged":
            out.copy_(kept)
        elif path == "pinned":
            from_pinned(self.pinned, kept, out)
        return path, out.numel() * out.element_size(), t_ready

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
