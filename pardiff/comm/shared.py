"""Shared staging: a GPU tensor crosses to a rank of the same node through host memory that both
processes map and page-lock, so MPI carries only a 24-byte header (``--staging shared``).

Pinned staging (staging.py) pays two DMA copies and MPI's copy of the whole message from one
process's pinned buffer into the other's: on two H200s a 786 KB latent took 221 µs against
60 µs for the two copies, most of the rest MPI's copy out of memory the GPU had just written
(docs/performance.md). Here the sender's GPU writes the bytes by DMA straight into a shared
arena, the receiver's GPU reads them from there, and the one MPI message says where they are:
two copies and a small message's latency.

The arena is an MPI-3 shared window (``MPI.Win.Allocate_shared`` on the node's ranks), every
segment page-locked in every process with ``cudaHostRegister`` so both GPUs reach it by DMA.
Rank r's segment:

    [ 64 bytes per node rank s: how far r has consumed s's lane to r (written by r, read by s) ]
    [ one lane of ``lane_bytes`` per other node rank d: r's messages to d, a ring ]

Positions in a lane grow without end (offset = position % lane_bytes) in steps of 256 bytes, so
every message starts aligned for any dtype. A sender puts a message past what it last wrote,
skipping the lane's tail when the message would wrap, or going back to the lane's start when
the receiver has read everything (so that messages exchanged in turn sit at one place, where
their tensor views are kept: made per message, they cost ~20 µs a message on an H100's host);
it never waits for room: a message that is larger than the lane, or does not fit beside what
the receiver has not consumed yet, goes through the pinned MPI path instead (its header says
so), so a full lane slows a message and never blocks a rank. The lane's tail skipped when
starting over counts as free at once (everything before it was read). A receiver marks a message consumed when its GPU's copy
out of the arena has run (a CUDA event, queried at later calls, never waited for); a receiver
that takes messages out of order (different tags) frees lane space only up to the first one
still unread.

CPU tensors work too (copied synchronously, consumed at once): the tests drive the lanes on CPU
ranks; Comm routes only GPU tensors here, as a CPU tensor goes to MPI zero-copy. Empty tensors
never take lane space (their header says INLINE: zero bytes follow).
"""
from __future__ import annotations

import mmap
import os
from collections import deque

import numpy as np
import torch

INLINE = 2**64 - 1          # a header's data position when the bytes follow as an MPI message
HEADER_WORDS = 3            # [claim start, data position, bytes] as uint64
_LINE = 64                  # one cache line per counter: writers of neighbouring counters do not contend
_ALIGN = 256                # message positions: aligned for every dtype (and as CUDA copies like them)


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


class SharedStaging:
    """The node's shared arena, as seen by one rank of ``mpi_comm`` (collective to create)."""

    def __init__(self, mpi_comm, lane_bytes: int):
        from mpi4py import MPI
        if lane_bytes < 4096 or lane_bytes % _ALIGN:
            raise ValueError(f"lane_bytes must be a multiple of {_ALIGN}, at least 4096, got {lane_bytes}")
        self.lane_bytes = lane_bytes
        local = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        self._local_of = {w: i for i, w in enumerate(local.allgather(mpi_comm.Get_rank()))}
        n = self.local_size
        self._ctrl_bytes = _aligned(_LINE * n)
        page = mmap.PAGESIZE        # whole pages per segment: page-locked ranges of two segments do not share one
        nbytes = -(-(self._ctrl_bytes + lane_bytes * (n - 1)) // page) * page
        _check_room(local, nbytes * n)
        info = MPI.Info.Create()
        info.Set("alloc_shared_noncontig", "true")      # each segment on its own pages, where the MPI honours it
        self._win = MPI.Win.Allocate_shared(nbytes, 1, info=info, comm=local)
        info.Free()
        self._local = local
        self._segments, self._counters = [], []
        for r in range(n):
            memory, _ = self._win.Shared_query(r)
            self._segments.append(torch.frombuffer(memory, dtype=torch.uint8))
            self._counters.append(np.frombuffer(memory, dtype=np.uint64, count=self._ctrl_bytes // 8))
        self._counters[self.local_rank][:] = 0       # MPI does not promise zeroed memory
        local.Barrier()
        self._registered = []          # data pointers page-locked in this process
        self._head = {}                # dest local rank -> next free position of my lane to it
        self._restart = {}             # dest -> where I last started its lane over (before it: all read)
        self._done = {}                # source -> {claim start: end} read, behind one still unread (claims never
                                       # share a start: every claim holds at least one byte)
        self._pending = {}             # source -> deque of (claim start, end, event) copies in flight
        self._events = []              # CUDA events to reuse
        self._views = {}

    # --- set up ---------------------------------------------------------------------------
    def local(self, rank: int) -> bool:
        """Whether ``rank`` (of the communicator the arena was made on) is another rank of this node."""
        return rank in self._local_of and self._local_of[rank] != self.local_rank

    def register(self) -> None:
        """Page-lock every segment in this process, so the GPU reaches it by DMA (once; slow: it
        locks the pages, so runtime.run and bench comm call it at setup, before the clock)."""
        if self._registered:
            return
        cudart = torch.cuda.cudart()
        for ptr, nbytes in _runs([(seg.data_ptr(), seg.numel()) for seg in self._segments]):
            err = int(cudart.cudaHostRegister(ptr, nbytes, 1))      # 1: cudaHostRegisterPortable
            if err != 0:
                raise RuntimeError(f"--staging shared: cudaHostRegister of the node's shared arena failed "
                                   f"({cudart.cudaGetErrorString(cudart.cudaError(err))}); use --staging pinned")
            self._registered.append(ptr)

    def close(self) -> None:
        """Free the arena (collective on the node's ranks), once the copies out of it have run."""
        for pending in self._pending.values():
            for _, _, event in pending:
                if event is not None:
                    event.synchronize()
        self._pending.clear()
        if self._registered:
            cudart = torch.cuda.cudart()
            for ptr in self._registered:
                cudart.cudaHostUnregister(ptr)
            self._registered = []
        self._views.clear()
        self._segments, self._counters = [], []
        self._win.Free()
        self._local.Free()

    # --- the lanes --------------------------------------------------------------------------
    def _lane(self, src: int, dst: int) -> int:
        """Byte offset of src's lane to dst in src's segment (local ranks)."""
        return self._ctrl_bytes + (dst if dst < src else dst - 1) * self.lane_bytes

    def _view(self, src: int, start: int, like: torch.Tensor) -> torch.Tensor:
        """The arena's bytes at ``start`` of src's segment, as ``like``'s dtype and shape (kept:
        torch views cost µs each, and a lane's messages of one size come back to the same places)."""
        key = (src, start, like.dtype, like.shape)
        view = self._views.get(key)
        if view is None:
            if len(self._views) > 4096:
                self._views.clear()
            nbytes = like.numel() * like.element_size()
            view = self._segments[src][start:start + nbytes].view(like.dtype).view(like.shape)
            self._views[key] = view
        return view

    def put(self, tensor: torch.Tensor, dest: int) -> np.ndarray:
        """Write ``tensor`` into my lane to world rank ``dest`` if it has room; returns the header
        to send. When the header's data position is INLINE the bytes were not written: send them
        as an MPI message after the header. A GPU tensor's copy is complete on return."""
        me, d = self.local_rank, self._local_of[dest]
        nbytes = tensor.numel() * tensor.element_size()
        start = self._head.get(d, 0)
        offset = start % self.lane_bytes
        # all before `read` is free: what the receiver has freed, and the lane's tail skipped by a start-over
        read = max(int(self._counters[d][me * _LINE // 8]), self._restart.get(d, 0))
        restart = offset and start == read          # everything read: start the lane over (its views are kept)
        data = start + self.lane_bytes - offset if restart or offset + nbytes > self.lane_bytes else start
        if not 0 < nbytes <= self.lane_bytes or (start > read and data + nbytes - read > self.lane_bytes):
            return np.array([start, INLINE, nbytes], dtype=np.uint64)
        self._view(me, self._lane(me, d) + data % self.lane_bytes, tensor).copy_(tensor, non_blocking=True)
        if tensor.is_cuda:
            torch.cuda.current_stream(tensor.device).synchronize()   # the bytes are there before the header
            self.reclaim()      # and so are this rank's copies out of the arena queued before them
        if restart:
            self._restart[d] = data
        self._head[d] = data + _aligned(nbytes)
        return np.array([start, data, nbytes], dtype=np.uint64)

    def take(self, header: np.ndarray, source: int, out: torch.Tensor) -> bool:
        """Copy the message a header from world rank ``source`` points at into ``out``; False if
        the header says the bytes follow as an MPI message (nothing copied). A GPU copy is queued
        on the current stream (later kernels see the data) and not waited for."""
        start, data, nbytes = (int(v) for v in header)
        if data == INLINE:
            return False
        if nbytes != out.numel() * out.element_size():
            raise RuntimeError(f"rank {source}'s message has {nbytes} bytes, expected "
                               f"{out.numel() * out.element_size()}")
        s, me = self._local_of[source], self.local_rank
        out.copy_(self._view(s, self._lane(s, me) + data % self.lane_bytes, out), non_blocking=True)
        event = None
        if out.is_cuda:
            event = self._events.pop() if self._events else torch.cuda.Event()
            event.record(torch.cuda.current_stream(out.device))
        self._pending.setdefault(s, deque()).append((start, data + _aligned(nbytes), event))
        self.reclaim()
        return True

    def reclaim(self) -> None:
        """Publish, for every lane to me, how far its messages' copies out of the arena have run."""
        for s, pending in self._pending.items():
            done = self._done.setdefault(s, {})
            while pending and (pending[0][2] is None or pending[0][2].query()):
                start, end, event = pending.popleft()
                if event is not None:
                    self._events.append(event)
                done[start] = end
            counter = self._counters[self.local_rank]       # how far s's lane to me is read
            published = consumed = int(counter[s * _LINE // 8])
            while consumed in done:
                consumed = done.pop(consumed)
            if consumed != published:
                counter[s * _LINE // 8] = consumed


def _runs(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(pointer, bytes) ranges merged where one ends where the next begins: one registration each."""
    runs = []
    for ptr, nbytes in sorted(ranges):
        if runs and runs[-1][0] + runs[-1][1] == ptr:
            runs[-1] = (runs[-1][0], runs[-1][1] + nbytes)
        else:
            runs.append((ptr, nbytes))
    return runs


def _check_room(local, nbytes: int, folder: str = "/dev/shm") -> None:
    """Refuse an arena larger than the room left in ``folder``, where MPIs back shared windows on
    Linux (a container's is often 64 MB): past it, the first write to the window is a SIGBUS, not
    an error. Decided on the node's first rank and told to the others, so all refuse together."""
    free = None
    if local.Get_rank() == 0:
        try:
            stat = os.statvfs(folder)
            free = stat.f_bavail * stat.f_frsize
        except OSError:                 # no such folder: the MPI backs its windows elsewhere
            pass
    free = local.bcast(free, root=0)
    if free is not None and nbytes > free:
        raise RuntimeError(f"--staging shared: the node's arena needs {nbytes >> 20} MiB of shared memory, "
                           f"{folder} has {free >> 20} MiB free: lower --staging-lane-mb (docs/hpc.md)")
