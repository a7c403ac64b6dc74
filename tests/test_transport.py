"""Transports and overlap: torch.distributed (gloo here; NCCL on GPUs), non-blocking sends,
SE2P's swapped exchange, the GPU warm-up's batch sizes. Multi-rank tests run under mpiexec."""
import json

import numpy as np
import pytest
import torch
from mpi4py import MPI

from conftest import pardiff
from pardiff.algorithms.window import row_counts
from pardiff.comm.mpi import MPIComm, cuda_aware
from pardiff.comm.torchdist import TorchDistComm
from pardiff.config import RunConfig
from pardiff.runtime import set_tf32, warm_batches
from pardiff.sim.execute import simulate
from pardiff.sim.network import Link, Network
from pardiff.sim.profile import Profile
from pardiff.trace.reader import load_trace
from pardiff.trace.recorder import Recorder

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64]


def exchange_with_isend(comm, mine: torch.Tensor) -> torch.Tensor:
    """Every rank sends to its right neighbour and receives from its left one at the same time.
    With blocking sends of a large message this deadlocks (each Send waits for its receive)."""
    right, left = (comm.rank + 1) % comm.size, (comm.rank - 1) % comm.size
    sending = comm.isend(mine, right, label="latent", line="TEST:1")
    theirs = comm.recv(torch.empty_like(mine), left, label="latent", line="TEST:2")
    sending.wait()
    return theirs


@pytest.mark.parallel([2, 3])
def test_isend_exchange_of_large_messages_mpi():
    comm = MPIComm()
    assert comm.size == MPI.COMM_WORLD.size and comm.size >= 2
    mine = torch.full((2, 1024, 1024), float(comm.rank))           # 8 MiB: past any eager limit
    theirs = exchange_with_isend(comm, mine)
    assert torch.equal(theirs, torch.full_like(mine, float((comm.rank - 1) % comm.size)))
    assert comm.recorder.count("send", "latent") == comm.recorder.count("recv", "latent") == 1


@pytest.mark.parallel([2, 3])
def test_torch_distributed_gloo_every_dtype_and_isend():
    comm = TorchDistComm("gloo")
    try:
        assert comm.size == MPI.COMM_WORLD.size and comm.size >= 2 and comm.backend == "gloo"
        right, left = (comm.rank + 1) % comm.size, (comm.rank - 1) % comm.size
        for dtype in DTYPES:
            x = (torch.arange(60).reshape(3, 4, 5) + 100 * comm.rank).to(dtype)
            theirs = exchange_with_isend(comm, x)
            assert theirs.dtype == dtype and torch.equal(theirs, (torch.arange(60).reshape(3, 4, 5) + 100 * left).to(dtype))
        big = exchange_with_isend(comm, torch.full((2, 1024, 1024), float(comm.rank)))
        assert torch.equal(big, torch.full((2, 1024, 1024), float(left)))
        # blocking send / recv, and the MPI side (collectives) of the same Comm
        if comm.rank == 0:
            comm.send(torch.tensor([7, 8]), 1, label="seed", line="TEST:3")
        elif comm.rank == 1:
            assert comm.recv(torch.zeros(2, dtype=torch.int64), 0, label="seed", line="TEST:3").tolist() == [7, 8]
        f = comm.allreduce(torch.tensor([comm.rank + 5]), "min", label="residual", line="TEST:4")
        assert int(f[0]) == 5
        assert comm.recorder.count("send") == len(DTYPES) + 1 + (comm.rank == 0)
        del right
    finally:
        comm.close()


def test_cuda_aware_detection():
    class Reports:
        @staticmethod
        def Query_cuda_support():
            return 1

    class Silent:
        pass
    assert cuda_aware(Reports, environ={}) is True
    assert cuda_aware(Silent, environ={}) is False
    assert cuda_aware(Reports, environ={"PARDIFF_CUDA_AWARE_MPI": "0"}) is False
    assert cuda_aware(Silent, environ={"PARDIFF_CUDA_AWARE_MPI": "1"}) is True


# --- the algorithms over gloo and with the swapped exchange: same samples ----------------------

@pytest.mark.parametrize("algo,ranks,args", [
    ("se2p", 3, ["--steps", 10]),
    ("parasolver", 3, ["--steps", 20, "--sampler", "ddim", "--subintervals", 10, "--window", 6]),
    ("paradigms", 2, ["--steps", 20, "--sampler", "dpmsolver", "--window", 8]),
])
def test_gloo_transport_gives_the_mpi_samples(tmp_path, algo, ranks, args):
    for transport in ("mpi", "gloo"):
        pardiff(ranks, "run", algo, *args, "--transport", transport, "--out", f"{transport}.npy",
                "--trace", f"{transport}.h5", cwd=tmp_path)
    assert np.array_equal(np.load(tmp_path / "mpi.npy"), np.load(tmp_path / "gloo.npy"))
    trace = load_trace(tmp_path / "gloo.h5")
    assert trace.attrs["backend"] == "gloo" and trace.attrs["params"]["transport"] == "gloo"
    paths = {str(p) for r in trace.ranks for p in trace.events[r]["path"] if p}
    assert "gloo" in paths and paths <= {"gloo", "host"}           # host: collectives stay on MPI


def _sim(tmp_path, name, ranks, network=None, profile=None, **cfg):
    network = network or Network("test", Link(1e-3, 1e9), Link(1e-3, 1e9), 64)
    cfg = RunConfig(trace=str(tmp_path / f"{name}.h5"), out=str(tmp_path / f"{name}.npy"),
                    report=str(tmp_path / f"{name}.json"), **cfg)
    assert simulate(cfg, ranks, network, profile) == 0
    return (np.load(tmp_path / f"{name}.npy"), load_trace(tmp_path / f"{name}.h5"),
            json.loads((tmp_path / f"{name}.json").read_text()))


@pytest.mark.parametrize("ranks", [2, 3, 4])
@pytest.mark.parametrize("integration", ["predictor", "naive", "predictor-tk1"])
def test_se2p_swap_gives_the_roundtrip_samples_faster(tmp_path, ranks, integration):
    """--exchange swap: bit-identical samples, the same messages (one fewer per link and step for
    t_k+1, whose sender already holds line 10's value), less time when messages are slow."""
    common = dict(algorithm="se2p", steps=8, integration=integration, seed_sharing="precomputed")
    fixed = Profile("gmm", "float32", "test", [1], [0.010], [0.010], [0.002])    # 10 ms per ε, 2 ms per update
    x_rt, tr_rt, rep_rt = _sim(tmp_path, "rt", ranks, profile=fixed, **common)
    x_sw, tr_sw, rep_sw = _sim(tmp_path, "sw", ranks, profile=fixed, exchange="swap", **common)
    assert np.array_equal(x_rt, x_sw)
    sends = [sum(int(np.sum(t.events[r]["kind"] == "send")) for r in t.ranks) for t in (tr_rt, tr_sw)]
    links_x_steps = (ranks - 1) * 7
    assert sends[1] == sends[0] - (links_x_steps if integration == "predictor-tk1" else 0)
    # 1 ms per message: on two ranks the roundtrip pays two messages per step on the critical path,
    # swap one; on more ranks the virtual sends are eager (the next link's message is already
    # there), so at least one message per step is saved. Seeds are precomputed: no other messages.
    saved = rep_rt["wall_s"] - rep_sw["wall_s"]
    assert saved > 0.9e-3 * 7, (rep_rt["wall_s"], rep_sw["wall_s"])


@pytest.mark.parametrize("name,ranks,cfg", [
    ("se2p-rt", 4, dict(algorithm="se2p", steps=8)),
    ("se2p-swap", 4, dict(algorithm="se2p", steps=8, exchange="swap")),
    ("se2p-naive", 3, dict(algorithm="se2p", steps=8, integration="naive", exchange="swap")),
    ("parasolver-ddpm", 3, dict(algorithm="parasolver", steps=40, subintervals=20, window=12)),
    ("parasolver-dpm", 4, dict(algorithm="parasolver", steps=20, sampler="dpmsolver", window=10)),
    ("paradigms", 3, dict(algorithm="paradigms", steps=30, sampler="ddim", window=9)),
])
def test_messages_between_two_ranks_are_received_in_sending_order(tmp_path, name, ranks, cfg):
    """NCCL ignores tags: it matches a pair's messages in the order they were sent. Every
    algorithm must therefore receive each peer's messages in that order, whatever their tags."""
    _, trace, _ = _sim(tmp_path, name, ranks, **cfg)
    checked = 0
    for a in trace.ranks:
        for b in trace.ranks:
            ev_a, ev_b = trace.events[a], trace.events[b]
            sent = ev_a[(ev_a["kind"] == "send") & (ev_a["peer"] == b)]
            got = ev_b[(ev_b["kind"] == "recv") & (ev_b["peer"] == a)]
            sent_tags = sent["tag"][np.argsort(sent["t_start"], kind="stable")].tolist()
            got_tags = got["tag"][np.argsort(got["t_start"], kind="stable")].tolist()
            assert sent_tags == got_tags, (a, b)
            checked += len(sent_tags)
    assert checked > 0


@pytest.mark.parametrize("algo,ranks,extra", [
    ("parasolver", 1, dict(steps=40, subintervals=20, window=12)),
    ("parasolver", 3, dict(steps=40, subintervals=20, window=12)),
    ("paradigms", 2, dict(steps=30, window=9)),
    ("paradigms", 4, dict(steps=25, window=25)),
])
def test_warm_up_covers_every_batch_size_the_run_evaluates(tmp_path, algo, ranks, extra):
    """The GPU warm-up (and CUDA graph capture) evaluates every batch size in advance: the sizes
    in a trace's compute events must all be among runtime.warm_batches."""
    _, trace, _ = _sim(tmp_path, algo, ranks, algorithm=algo, batch=2, tol=0.0, **extra)
    for r in trace.ranks:
        ev = trace.events[r]
        used = set(ev[ev["kind"] == "compute"]["batch"].tolist())
        cfg = RunConfig(algorithm=algo, batch=2, **extra)
        assert used and used <= set(warm_batches(cfg, r, ranks)), (r, used)


def test_row_counts_by_hand():
    # 10 points, window 4, 1 rank: windows of 4 until the last three shrink to 3, 2, 1
    assert row_counts(10, 4, 0, 1) == [1, 2, 3, 4]
    # 2 ranks, blocks of ⌈4 / 8⌉ = 1 point dealt alternately: a window of 4 holds 2 of each rank's
    assert row_counts(10, 4, 0, 2) == [1, 2] and row_counts(10, 4, 1, 2) == [1, 2]


@pytest.mark.parametrize("args,flag", [
    (["--transport", "nccl"], "--transport"),
    (["--transport", "carrier-pigeon"], "--transport"),
    (["--cuda-graphs", "on"], "--cuda-graphs"),
    (["--compile", "on"], "--compile"),
    (["--compile", "max"], "--compile"),
    (["--exchange", "both"], "--exchange"),
    (["--staging", "shared"], "--staging"),             # CPU ranks: no GPU tensors to stage
    (["--staging", "carrier-pigeon"], "--staging"),
    (["--staging-lane-mb", "32"], "--staging-lane-mb"),  # without --staging shared
    (["--staging", "shared", "--staging-lane-mb", "0"], "--staging-lane-mb"),
])
def test_transport_and_graph_flag_errors(tmp_path, args, flag):
    r = pardiff(2, "run", "se2p", "--device", "cpu", *args, cwd=tmp_path, check=False)
    assert r.returncode == 2 and f"pardiff: error: {flag}:" in r.stderr, r.stderr
    assert r.stderr.count("pardiff: error:") == 1


def test_simulator_refuses_staging(tmp_path):
    r = pardiff(None, "simulate", "se2p", "--ranks", "2", "--staging", "shared", cwd=tmp_path, check=False)
    assert r.returncode == 2 and "pardiff: error: --staging:" in r.stderr, r.stderr


class ListRecorder(Recorder):
    """Keeps every message's (kind, bytes, path)."""

    def __init__(self, rank):
        super().__init__(rank)
        self.messages = []

    def record(self, kind, label, line, t_start, t_end, **fields):
        if kind in ("send", "recv"):
            self.messages.append((kind, fields["nbytes"], fields["path"]))
        super().record(kind, label, line, t_start, t_end, **fields)


def shared_comm(lane_bytes: int) -> MPIComm:
    """An MPIComm with the node's shared arena that stages CPU tensors through it too, as it
    stages GPU tensors on a GPU node (tests/test_gpu.py runs it on GPUs): the lanes, headers,
    wrap-around, fallback and reclaiming are the same code."""
    comm = MPIComm(recorder=ListRecorder(MPI.COMM_WORLD.rank))
    assert comm.size == MPI.COMM_WORLD.size >= 2            # really under mpiexec
    comm.share_staging(lane_bytes)
    comm._shared_with = lambda tensor, peer: comm.shared.local(peer)
    return comm


@pytest.mark.parallel([2, 3])
def test_shared_staging_ping_pong_reuses_its_lane():
    """Messages that wrap around a lane many times all go through it (none fall back to MPI):
    the receiver frees what it has read, the sender sees it."""
    lane = 64 * 1024
    comm = shared_comm(lane)
    try:
        peer = 1 - comm.rank if comm.rank < 2 else None
        for i in range(200):
            if peer is None:
                break
            mine = torch.full((5000 + 7 * i,), float(1000 * comm.rank + i))    # 20-26 KB: wraps every 2-3 messages
            if comm.rank == 0:
                comm.send(mine, peer, label="latent", line="TEST:1")
                got = comm.recv(torch.empty_like(mine), peer, label="latent", line="TEST:2")
            else:
                got = comm.recv(torch.empty_like(mine), peer, label="latent", line="TEST:1")
                comm.send(mine, peer, label="latent", line="TEST:2")
            assert torch.equal(got, torch.full_like(mine, float(1000 * peer + i))), i
        if peer is not None:
            assert [path for _, _, path in comm.recorder.messages] == ["shared"] * 400
    finally:
        comm.close()


@pytest.mark.parallel(2)
def test_shared_staging_wraps_around_unread_messages():
    """Positions in a lane, message by message: A and B sent before the receiver reads either;
    once A is read, C (too large for the lane's tail) goes to the lane's start, beside unread B;
    D finds no room beside B and C (MPI carries it); once everything is read, E starts the lane over."""
    lane, n = 64 * 1024, 6000                  # 24 000-byte messages
    comm = shared_comm(lane)
    try:
        msg = {k: torch.full((n,), float(i)) for i, k in enumerate("ABCDE")}

        def send(k):
            pending = comm.isend(msg[k], 1, label="latent", line="TEST:5")
            return pending, int(comm.shared._head.get(1, 0))

        def recv(k):
            assert torch.equal(comm.recv(torch.empty(n), 0, label="latent", line="TEST:5"), msg[k]), k

        heads = []
        if comm.rank == 0:
            pending = [send("A"), send("B")]
            comm.barrier()                     # the receiver reads A between these two
            comm.barrier()
            pending += [send("C"), send("D")]
            comm.barrier()                     # and B, C, D between these two
            comm.barrier()
            pending.append(send("E"))
            for p, head in pending:
                p.wait()
                heads.append(head)
            a = 24064                          # 24 000 bytes, positions in steps of 256
            assert heads == [a, 2 * a, lane + a, lane + a, 2 * lane + a], heads
            assert [path for _, _, path in comm.recorder.messages] == ["shared"] * 3 + ["host", "shared"]
        else:
            comm.barrier()
            recv("A")
            comm.barrier()
            comm.barrier()
            for k in "BCD":
                recv(k)
            comm.barrier()
            recv("E")
            assert [path for _, _, path in comm.recorder.messages] == ["shared"] * 3 + ["host", "shared"]
    finally:
        comm.close()


@pytest.mark.parallel([2, 3])
def test_shared_staging_out_of_order_tags_overflow_and_isend():
    """Every rank sends to every other at once with isend (each would deadlock if a send waited for
    its receive); receivers take two tags in the opposite order to their sending; messages larger
    than the lane, or than what the receiver has not freed, go through MPI after their header."""
    lane = 64 * 1024
    comm = shared_comm(lane)
    try:
        peers = [r for r in range(comm.size) if r != comm.rank]
        # floats per (latent, x_pred): 20000 and 17000 are larger than the lane; 9000 + 10000 are not,
        # but the second finds no room: its receiver takes it before the first and frees nothing
        rounds = [(100, 12000), (9000, 10000), (20000, 1), (1, 20000), (17000, 6000), (12000, 100)]
        for r, sizes in enumerate(rounds):
            pending = []
            for peer in peers:
                for label, n in zip(("latent", "x_pred"), sizes):
                    x = torch.arange(n, dtype=torch.float32) + 1e5 * comm.rank + 1e3 * r + (label == "x_pred")
                    pending.append(comm.isend(x, peer, label=label, line="TEST:3"))
            for peer in peers:
                for label, n in reversed(list(zip(("latent", "x_pred"), sizes))):
                    got = comm.recv(torch.empty(n), peer, label=label, line="TEST:4")
                    want = torch.arange(n, dtype=torch.float32) + 1e5 * peer + 1e3 * r + (label == "x_pred")
                    assert torch.equal(got, want), (r, peer, label)
            for p in pending:
                p.wait()
            comm.barrier()
        sent = [(n, path) for kind, n, path in comm.recorder.messages if kind == "send"]
        assert {path for n, path in sent if n > lane} == {"host"}     # too large for the lane: MPI carries it
        assert {path for n, path in sent if n <= lane} == {"shared", "host"}   # and some found no room
    finally:
        comm.close()


@pytest.mark.parallel(2)
def test_shared_staging_burst_after_a_start_over_mixed_dtypes_and_empty():
    """After the lane starts over, its skipped tail is free at once: a burst of 14 messages the
    receiver has not read yet fits (57 KB of a 64 KB lane). float16 messages of odd length and
    float64 ones alternate (positions stay aligned for both); an empty message takes no space."""
    lane = 64 * 1024
    comm = shared_comm(lane)
    try:
        first = torch.arange(6, dtype=torch.float16)
        burst = [torch.arange(1999, dtype=torch.float16) + k if k % 2 == 0 else
                 torch.arange(500, dtype=torch.float64) * k for k in range(14)]
        empty = torch.empty(0, dtype=torch.float32)
        if comm.rank == 0:
            comm.send(first, 1, label="latent", line="TEST:6")
            comm.barrier()                      # the receiver has read it: the next message starts over
            pending = [comm.isend(x, 1, label="latent", line="TEST:6") for x in [*burst, empty]]
            comm.barrier()
            for p in pending:
                p.wait()
            assert [path for _, _, path in comm.recorder.messages] == ["shared"] * 15 + ["host"]
            assert comm.shared._restart[1] == lane
        else:
            assert torch.equal(comm.recv(torch.empty_like(first), 0, label="latent", line="TEST:6"), first)
            comm.barrier()
            comm.barrier()                      # the whole burst was sent before any of it is read
            for x in [*burst, empty]:
                assert torch.equal(comm.recv(torch.empty_like(x), 0, label="latent", line="TEST:6"), x)
    finally:
        comm.close()


@pytest.mark.parallel(2)
def test_shared_staging_refuses_an_arena_larger_than_dev_shm():
    """Every rank refuses together, before any memory is mapped (past /dev/shm's room the first
    write would be a SIGBUS)."""
    import os
    from pardiff.comm.shared import SharedStaging
    assert MPI.COMM_WORLD.size == 2                          # really under mpiexec
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    stat = os.statvfs("/dev/shm")
    lane = -(-(stat.f_bavail * stat.f_frsize) // (2 * 4096)) * 4096 + 4096     # two lanes: more than is free
    with pytest.raises(RuntimeError, match="--staging shared: the node's arena needs .* lower --staging-lane-mb"):
        SharedStaging(MPI.COMM_WORLD, lane)
    MPI.COMM_WORLD.Barrier()


def test_tf32_switch_sets_both_kinds_of_kernel():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False    # PyTorch's default
        set_tf32("default")
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, False)
        set_tf32("off")
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (False, False)
        set_tf32("on")
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_replay_of_a_swapped_exchange_reproduces_it(tmp_path):
    """Non-blocking sends are a send row (the post) and a wait row (the completion); replay
    prices them as the virtual Comm does, so a simulated trace with overlap replays exactly."""
    from pardiff.sim.replay import retime
    network = Network("test", Link(1e-3, 1e8), Link(1e-3, 1e8), 64)
    fixed = Profile("gmm", "float32", "test", [1], [0.010], [0.012], [0.002])
    _, trace, _ = _sim(tmp_path, "swap", 3, network=network, profile=fixed, algorithm="se2p", steps=6,
                       exchange="swap")
    kinds = {str(k) for r in trace.ranks for k in trace.events[r]["kind"]}
    assert {"send", "recv", "wait"} <= kinds
    new = retime(trace, network, fixed)
    for r, ev in trace.events.items():
        for field in ("t_start", "t_ready", "t_end"):
            assert np.allclose(new[r][field], ev[field], rtol=0, atol=1e-12), (r, field)
