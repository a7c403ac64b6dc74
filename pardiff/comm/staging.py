"""Host staging of GPU tensors for transports that only read host memory.

An MPI that is not CUDA-aware (the GPU machine's Open MPI 4.1.6 segfaults on a CUDA
pointer) reads and writes host memory only, so a GPU tensor crosses through a host buffer.
A pageable buffer (``tensor.to("cpu")``) makes the driver copy through its own pinned
bounce buffer, at a fraction of the bus bandwidth; a page-locked (pinned) buffer is copied
by DMA at full speed, and the copy into the GPU on receipt can run asynchronously while
the host goes on. ``PinnedPool`` keeps such buffers for reuse: pinning is slow (a system
call that locks pages), so it is paid once per message size, not per message. Each buffer
also keeps what a message needs besides its memory (its numpy view for MPI, its view as the
tensor being sent, its CUDA events): made per message, four torch views at 2.5–4 µs each on
the H100 machine's host, two numpy views and an event were about half of what pardiff added
to a staged message (launch/probe_staging.py, docs/performance.md).
"""
from __future__ import annotations

import torch


class PinnedBuffer:
    """A page-locked host buffer of ``nbytes`` bytes: ``array`` (numpy uint8) is what the
    transport reads and writes, ``like(tensor)`` the same memory as ``tensor``'s dtype and shape.
    ``record(stream)`` marks the last GPU copy that reads or writes it, with one event per
    device (an event belongs to the device it was first recorded on)."""

    def __init__(self, nbytes: int):
        self.memory = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        self.array = self.memory.numpy()
        self._events: dict[int, torch.cuda.Event] = {}
        self._views = {}

    def like(self, tensor: torch.Tensor) -> torch.Tensor:
        key = (tensor.dtype, tensor.shape)
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = self.memory.view(tensor.dtype).view(tensor.shape)
        return view

    def record(self, stream: torch.cuda.Stream) -> None:
        event = self._events.get(stream.device_index)
        if event is None:
            event = self._events[stream.device_index] = torch.cuda.Event()
        event.record(stream)

    def idle(self) -> bool:
        """Whether no GPU copy recorded on it is still to run."""
        return all(event.query() for event in self._events.values())


class PinnedPool:
    """Reusable pinned buffers, one per message in flight.

    ``acquire(nbytes)`` gives a free buffer of exactly ``nbytes``; ``release(buf)`` returns it,
    to be reused once the GPU has run the copies recorded on it (at once if none was recorded
    since it was last free).
    """

    def __init__(self):
        self._free: dict[int, list[PinnedBuffer]] = {}
        self._busy: list[PinnedBuffer] = []

    def acquire(self, nbytes: int) -> PinnedBuffer:
        still_busy = []
        for buf in self._busy:
            if buf.idle():
                self._free.setdefault(buf.array.nbytes, []).append(buf)
            else:
                still_busy.append(buf)
        self._busy = still_busy
        free = self._free.get(nbytes)
        return free.pop() if free else PinnedBuffer(nbytes)

    def release(self, buf: PinnedBuffer) -> None:
        self._busy.append(buf)


def to_pinned(pool: PinnedPool, tensor: torch.Tensor) -> PinnedBuffer:
    """Copy a GPU tensor into a pinned buffer of the pool; returns the buffer, the copy complete.

    The copy is queued on the current stream behind the kernels that produced ``tensor``,
    then the host waits for that stream: the one synchronisation a host transport needs."""
    buf = pool.acquire(tensor.numel() * tensor.element_size())
    buf.like(tensor).copy_(tensor, non_blocking=True)
    torch.cuda.current_stream(tensor.device).synchronize()
    return buf


def from_pinned(pool: PinnedPool, buf: PinnedBuffer, out: torch.Tensor) -> None:
    """Queue the copy of a received pinned buffer into GPU tensor ``out`` without waiting;
    the buffer returns to the pool when that copy has run. Later kernels on the current
    stream see the data (stream order)."""
    out.copy_(buf.like(out), non_blocking=True)
    buf.record(torch.cuda.current_stream(out.device))
    pool.release(buf)
