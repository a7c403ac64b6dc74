"""Host staging of GPU tensors for transports that only read host memory.

An MPI that is not CUDA-aware (the GPU machine's Open MPI 4.1.6 segfaults on a CUDA
pointer) reads and writes host memory only, so a GPU tensor crosses through a host buffer.
A pageable buffer (``tensor.to("cpu")``) makes the driver copy through its own pinned
bounce buffer, at a fraction of the bus bandwidth; a page-locked (pinned) buffer is copied
by DMA at full speed, and the copy into the GPU on receipt can run asynchronously while
the host goes on. ``PinnedPool`` keeps such buffers for reuse: pinning is slow (a system
call that locks pages), so it is paid once per message size, not per message.
"""
from __future__ import annotations

import torch


class PinnedPool:
    """Reusable page-locked host buffers, one per message in flight.

    ``acquire(nbytes)`` gives a free buffer (uint8, exactly ``nbytes``); ``release(buf, event)``
    returns it once ``event`` (a CUDA event recorded after the last GPU copy reading or writing
    it, or None) has completed.
    """

    def __init__(self):
        self._free: dict[int, list[torch.Tensor]] = {}
        self._busy: list[tuple[torch.Tensor, torch.cuda.Event | None]] = []

    def acquire(self, nbytes: int) -> torch.Tensor:
        still_busy = []
        for buf, event in self._busy:
            if event is None or event.query():
                self._free.setdefault(buf.numel(), []).append(buf)
            else:
                still_busy.append((buf, event))
        self._busy = still_busy
        free = self._free.get(nbytes)
        if free:
            return free.pop()
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    def release(self, buf: torch.Tensor, event=None) -> None:
        self._busy.append((buf, event))


def host_view(buf: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The uint8 buffer ``buf`` seen as a tensor of ``like``'s dtype and shape."""
    return buf.view(like.dtype).view(like.shape)


def to_pinned(pool: PinnedPool, tensor: torch.Tensor) -> torch.Tensor:
    """Copy a GPU tensor into a pinned buffer of the pool; returns the buffer, the copy complete.

    The copy is queued on the current stream behind the kernels that produced ``tensor``,
    then the host waits for that stream: the one synchronisation a host transport needs."""
    buf = pool.acquire(tensor.numel() * tensor.element_size())
    host_view(buf, tensor).copy_(tensor, non_blocking=True)
    torch.cuda.current_stream(tensor.device).synchronize()
    return buf


def from_pinned(pool: PinnedPool, buf: torch.Tensor, out: torch.Tensor) -> None:
    """Queue the copy of a received pinned buffer into GPU tensor ``out`` without waiting;
    the buffer returns to the pool when that copy has run. Later kernels on the current
    stream see the data (stream order)."""
    out.copy_(host_view(buf, out), non_blocking=True)
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(out.device))
    pool.release(buf, event)
