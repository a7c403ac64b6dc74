"""Comm over real MPI ranks (mpi-pytest relaunches these under mpiexec -n 2/3/4)."""
import numpy as np
import pytest
import torch
from mpi4py import MPI

from pardiff.comm import tag_for
from pardiff.comm.mpi import MPIComm

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.uint8]


def ring(comm, tensor, label):
    """Send to the right neighbour, receive from the left one (even ranks send first)."""
    right, left = (comm.rank + 1) % comm.size, (comm.rank - 1) % comm.size
    out = torch.empty(tensor.shape, dtype=tensor.dtype)   # contiguous, whatever the strides of tensor
    if comm.rank % 2 == 0:
        comm.send(tensor, right, label=label, line="TEST:1")
        comm.recv(out, left, label=label, line="TEST:2")
    else:
        comm.recv(out, left, label=label, line="TEST:2")
        comm.send(tensor, right, label=label, line="TEST:1")
    return out, left


@pytest.mark.parallel([2, 3, 4])
def test_send_recv_every_dtype_zero_copy():
    comm = MPIComm()
    assert comm.size == MPI.COMM_WORLD.size and comm.size >= 2
    for dtype in DTYPES:
        x = (torch.arange(60).reshape(3, 4, 5) + 100 * comm.rank).to(dtype)
        out, left = ring(comm, x, "latent")
        assert out.dtype == dtype and torch.equal(out, (torch.arange(60).reshape(3, 4, 5) + 100 * left).to(dtype))
    assert comm.recorder.count("send", "latent") == comm.recorder.count("recv", "latent") == len(DTYPES)


@pytest.mark.parallel(2)
def test_large_message_and_transposed_tensor():
    comm = MPIComm()
    assert comm.size == 2
    big = torch.randn(2, 1024, 1024, generator=torch.Generator().manual_seed(comm.rank))   # 8 MiB
    out, left = ring(comm, big.transpose(1, 2), "drift")     # send makes it contiguous
    assert torch.equal(out, torch.randn(2, 1024, 1024, generator=torch.Generator().manual_seed(left)).transpose(1, 2))
    with pytest.raises(ValueError, match="contiguous"):
        comm.recv(torch.empty(4, 4).t(), 0, label="x_pred", line="TEST:3")


@pytest.mark.parallel(2)
def test_size_mismatch_is_an_error_not_silent():
    comm = MPIComm()
    assert comm.size == 2
    if comm.rank == 0:
        comm.send(torch.zeros(3), 1, label="seed", line="TEST:1")
    else:
        with pytest.raises(RuntimeError, match="expected 16"):
            comm.recv(torch.zeros(2, dtype=torch.float64), 0, label="seed", line="TEST:2")


@pytest.mark.parallel([2, 3, 4])
def test_collectives():
    comm = MPIComm()
    assert comm.size == MPI.COMM_WORLD.size
    total = comm.allreduce(torch.full((5,), float(comm.rank + 1)), "sum", label="residual", line="TEST:4")
    assert torch.equal(total, torch.full((5,), comm.size * (comm.size + 1) / 2))
    biggest = comm.allreduce(torch.tensor([comm.rank, -comm.rank]), "max", label="residual", line="TEST:5")
    assert biggest.tolist() == [comm.size - 1, 0]
    x = torch.arange(6.0) if comm.rank == comm.size - 1 else torch.zeros(6)
    comm.bcast(x, comm.size - 1, label="points", line="TEST:6")
    assert torch.equal(x, torch.arange(6.0))
    comm.barrier(line="TEST:7")
    assert comm.recorder.count("collective") == 4


@pytest.mark.parallel([2, 3])
def test_trace_rows_and_clock_alignment(tmp_path_factory):
    from pardiff.trace.recorder import Recorder
    from pardiff.trace.writer import PartWriter
    import time
    comm = MPIComm()
    assert comm.size == MPI.COMM_WORLD.size
    offset, rtt = comm.measure_clock_offset(time.perf_counter)
    # one host: CLOCK_MONOTONIC is shared, so the measured offset is within the round trip
    assert abs(offset) <= max(rtt, 1e-3)
    # a rank whose clock runs 5 s per rank ahead of rank 0's: the offset says by how much, with its sign
    skewed, rtt = comm.measure_clock_offset(lambda: time.perf_counter() + 5.0 * comm.rank)
    assert abs(skewed - 5.0 * comm.rank) <= max(rtt, 1e-3)
    path = comm.allgather_object(str(tmp_path_factory.getbasetemp() / "t.h5") if comm.rank == 0 else None)[0]
    writer = PartWriter(path, comm.rank, {"algorithm": "test", "world_size": comm.size}, {"host": "h"})
    comm.recorder = Recorder(comm.rank, writer)
    out, left = ring(comm, torch.ones(10), "x_pred")
    comm.recorder.close()
    from pardiff.trace.reader import load_trace
    comm._barrier()
    trace = load_trace(path)            # the parts folder, before any merge
    ev = trace.events[comm.rank]
    send, recv = ev[ev["kind"] == "send"][0], ev[ev["kind"] == "recv"][0]
    assert (send["peer"], recv["peer"]) == ((comm.rank + 1) % comm.size, left)
    assert send["tag"] == recv["tag"] == tag_for("x_pred") and send["nbytes"] == 40
    assert send["label"] == "x_pred" and send["line"] == "TEST:1" and send["path"] == "host"
    assert recv["t_start"] <= recv["t_ready"] <= recv["t_end"]
    assert len(trace.messages()) == comm.size


def test_pinned_pool_reuses_a_buffer_only_after_the_gpu_passed_its_event(monkeypatch):
    """The pool's bookkeeping (pinned memory itself needs a GPU: tests/test_gpu.py): a released
    buffer comes back for the same size once its copies have run, never while a copy may
    still read or write it."""
    from pardiff.comm import staging

    class FakeBuffer:
        def __init__(self, nbytes):
            self.array, self.copy_pending = np.zeros(nbytes, dtype=np.uint8), False

        def idle(self):
            return not self.copy_pending

    monkeypatch.setattr(staging, "PinnedBuffer", FakeBuffer)
    pool = staging.PinnedPool()
    a = pool.acquire(64)
    a.copy_pending = True                                 # a GPU copy out of a still to run
    pool.release(a)
    assert pool.acquire(64) is not a
    a.copy_pending = False
    assert pool.acquire(32) is not a                      # another size: another buffer
    assert pool.acquire(64) is a
    pool.release(a)                                       # released with nothing pending
    assert pool.acquire(64) is a and pool.acquire(64) is not a
