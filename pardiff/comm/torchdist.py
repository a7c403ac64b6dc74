"""The torch.distributed backend of Comm: NCCL for GPU tensors (or gloo for CPU ones), on MPI ranks.

The job is still an MPI job: the ranks, the launcher, node-local ranks, setup exchanges,
aborts and the small CPU messages (seeds, the stopping rule's all-reduce) stay on MPI. Only
tensors on this backend's device (``cuda`` for NCCL, ``cpu`` for gloo) move through
torch.distributed, GPU to GPU over NVLink / InfiniBand with NCCL, so a 786 KB latent takes
tens of microseconds instead of a host round trip (docs/performance.md). The process group
is set up from MPI itself: rank 0 picks a TCP port and broadcasts its address.

Two differences from MPI the algorithms must respect, and do (tests/test_transport.py checks
every algorithm's traces for the first):
- NCCL ignores tags: messages between two ranks are matched in the order they were sent,
  so a rank must receive a peer's GPU messages in the order the peer sent them;
- there is no probe, so a receive's waiting and transfer are one span (its ``t_ready`` is
  its start); the trace tools split it where its send began (trace/summary.py ready_times).

NCCL messages are ordered on the GPU stream like kernels: ``wait()`` makes the stream wait
for the transfer, not the host, so a rank issues its next steps while a message is in
flight and the GPU runs them as soon as the bytes are there (the issue's "no host syncs in
the inner loop"). A traced GPU rank times them with CUDA events like its compute
(trace/recorder.py): a row's start is when the stream reached the message (the data to
send existed, or the receive could land), its end when the transfer was done. An untraced
run's report then counts only the time to issue them, as for its compute.
"""
from __future__ import annotations

import datetime
import os
import socket

import torch

from .mpi import MPIComm

BACKENDS = {"nccl": "cuda", "gloo": "cpu"}      # backend -> the device type of the tensors it moves


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class TorchDistComm(MPIComm):
    """MPIComm whose tensors on ``BACKENDS[backend]`` go through torch.distributed."""

    def __init__(self, backend: str, device: torch.device | None = None, mpi_comm=None, recorder=None,
                 timeout_s: float = 600.0):
        import torch.distributed as dist
        if backend not in BACKENDS:
            raise ValueError(f"unknown torch.distributed backend {backend!r}; choose from {', '.join(BACKENDS)}")
        super().__init__(mpi_comm, recorder)
        self._dist = dist
        self.backend = backend
        self.dist_device = BACKENDS[backend]
        # PARDIFF_DIST_ADDR: the address of rank 0's node on the network the ranks share, where
        # its host name resolves to another one (as on some clusters' login interfaces)
        address = (os.environ.get("PARDIFF_DIST_ADDR") or socket.gethostname(), _free_port()) \
            if self.rank == 0 else None
        host, port = self._c.bcast(address, root=0)
        extra = {"device_id": torch.device(device)} if backend == "nccl" and device is not None else {}
        dist.init_process_group(backend, init_method=f"tcp://{host}:{port}", rank=self.rank,
                                world_size=self.size, timeout=datetime.timedelta(seconds=timeout_s), **extra)
        self._connect_pairs(device)

    def _connect_pairs(self, device) -> None:
        """One small message each way between every pair of ranks, before any clock starts: NCCL
        builds a connection for each direction on its first message, which takes far longer than
        a message (on 2×H200, 2026-11-24: SE2P's first message from rank 1 to rank 0, the
        direction not warmed then, took 94 ms)."""
        one = torch.zeros(1, device=device if self.dist_device == "cuda" else "cpu")
        for a in range(self.size):
            for b in range(a + 1, self.size):
                if self.rank == a:
                    self._dist.send(one, b)
                    self._dist.recv(one, b)
                elif self.rank == b:
                    self._dist.recv(one, a)
                    self._dist.send(one, a)
        if one.is_cuda:
            torch.cuda.synchronize(one.device)      # connected before any clock starts

    def _stream_ordered(self, tensor: torch.Tensor) -> bool:
        return tensor.is_cuda and self.dist_device == "cuda"

    def _post_send(self, tensor, dest, tag, blocking):
        if tensor.device.type != self.dist_device:
            return super()._post_send(tensor, dest, tag, blocking)
        data = tensor.contiguous()
        # torch.distributed keeps ``data`` alive until the transfer is done (the work holds it and
        # records it on NCCL's stream); after wait() the stream is ordered behind the transfer, so
        # later kernels may overwrite the buffer
        work = self._dist.isend(data, dest, tag=tag)
        if blocking:
            work.wait()
        return self.backend, data.numel() * data.element_size(), work.wait

    def _recv_into(self, out, source, tag):
        if out.device.type != self.dist_device:
            return super()._recv_into(out, source, tag)
        t_ready = self.recorder.now()
        self._dist.irecv(out, source, tag=tag).wait()    # on a GPU: the stream waits, not the host
        return self.backend, out.numel() * out.element_size(), t_ready

    def close(self) -> None:
        super().close()
        if self._dist.is_initialized():
            self._dist.destroy_process_group()
