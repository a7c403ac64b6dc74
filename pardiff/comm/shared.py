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

Positions in a lane grow without end (offset = position % lane_bytes). A sender puts a message
past what it last wrote, skipping the lane's tail when the message would wrap, or going back to
the lane's start when the receiver has read everything (so that messages exchanged in turn sit
at the same place, where their tensor views are kept: made per message, they cost ~20 µs a
message on an H100's host); it never waits for room: a message that is larger than the lane, or does not fit beside what the receiver has not
consumed yet, goes through the pinned MPI path instead (its header says so), so a full lane
slows a message and never blocks a rank. A receiver marks a message consumed when its GPU's copy
out of the arena has run (a CUDA event, queried at later calls, never waited for); a receiver
that takes messages out of order (different tags) frees lane space only up to the first one
still unread.

CPU tensors work too (copied synchronously, consumed at once): the tests drive the lanes on CPU
ranks; Comm routes only GPU tensors here, as a CPU tensor goes to MPI zero-copy.
"""
from __future__ import annotations

from collections import deque

import numpy as np
import torch

INLINE = 2**64 - 1          # a header's data position when the bytes follow as an MPI message
HEADER_WORDS = 3            # [claim start, data position, bytes] as uint64
_LINE = 64                  # one cache line per counter: writers of neighbouring counters do not contend


class SharedStaging:
    """The node's shared arena, as seen by one rank of ``mpi_comm`` (collective to create)."""

    def __init__(self, mpi_comm, lane_bytes: int):
        from mpi4py import MPI
        if lane_bytes < 4096:
            raise ValueError(f"lane_bytes must be at least 4096, got {lane_bytes}")
        self.lane_bytes = lane_bytes
        local = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        self._local_of = {w: i for i, w in enumerate(local.allgather(mpi_comm.Get_rank()))}
        n = self.local_size
        self._ctrl_bytes = _LINE * n
        self._win = MPI.Win.Allocate_shared(self._ctrl_bytes + lane_bytes * (n - 1), 1, comm=local)
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
        self._consumed = {}            # source local rank -> what I have consumed of its lane to me
        self._done = {}                # source -> {claim start: end} consumed out of order
        self._pending = {}             # source -> deque of (claim start, end, event) copies in flight
        self._events = []              # CUDA events to reuse
        self._views = {}

    # --- set up ---------------------------------------------------------------------------
    def local(self, world_rank: int) -> bool:
        """Whether ``world_rank`` shares this node (and so the arena)."""
        return world_rank in self._local_of and self._local_of[world_rank] != self.local_rank

    def register(self) -> None:
        """Page-lock every segment in this process, so the GPU reaches it by DMA (once; slow: it
        locks the pages, so runtime.run and bench comm call it at setup, before the clock)."""
        if self._registered:
            return
        cudart = torch.cuda.cudart()
        for seg in self._segments:
            ptr, nbytes = seg.data_ptr(), seg.numel()
            err = int(cudart.cudaHostRegister(ptr, nbytes, 1))      # 1: cudaHostRegisterPortable
            if err != 0:
                raise RuntimeError(f"--staging shared: cudaHostRegister of the node's shared arena failed "
                                   f"({cudart.cudaGetErrorString(cudart.cudaError(err))}); use --staging pinned")
            self._registered.append(ptr)

    def close(self) -> None:
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
        self.reclaim()
        nbytes = tensor.numel() * tensor.element_size()
        start = self._head.get(d, 0)
        offset = start % self.lane_bytes
        unread = start - int(self._counters[d][me * _LINE // 8])    # bytes of the lane the receiver has not freed
        # to the lane's start: when it is empty (messages then sit where their views are kept), or to wrap
        data = start + self.lane_bytes - offset if offset and (not unread or offset + nbytes > self.lane_bytes) \
            else start
        if nbytes > self.lane_bytes or (unread and data + nbytes - (start - unread) > self.lane_bytes):
            return np.array([start, INLINE, nbytes], dtype=np.uint64)
        self._view(me, self._lane(me, d) + data % self.lane_bytes, tensor).copy_(tensor, non_blocking=True)
        if tensor.is_cuda:
            torch.cuda.current_stream(tensor.device).synchronize()   # the bytes are there before the header
            self.reclaim()      # and so are this rank's copies out of the arena queued before them
        self._head[d] = data + nbytes
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
        self._pending.setdefault(s, deque()).append((start, data + nbytes, event))
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
            consumed = self._consumed.get(s, 0)
            while consumed in done:
                consumed = done.pop(consumed)
            if consumed != self._consumed.get(s, 0):
                self._consumed[s] = consumed
                self._counters[self.local_rank][s * _LINE // 8] = consumed
