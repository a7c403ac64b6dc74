"""The simulator: the same algorithm code on virtual ranks, replay of traces, and the cost models."""
import json
import statistics
import threading

import numpy as np
import pytest
import torch

from conftest import pardiff
from pardiff.bench import fit_link
from pardiff.comm.virtual import VirtualClock, VirtualComm, VirtualRecorder, World
from pardiff.sim.network import BUILTIN, Link, Network, load_network
from pardiff.config import RunConfig
from pardiff.runtime import warm_batches
from pardiff.sim.profile import Profile
from pardiff.sim.replay import retime
from pardiff.trace.reader import load_trace
from pardiff.trace.writer import PartWriter, merge_parts

COMMON = ["--model", "gmm", "--steps", 10, "--seed", 3, "--batch", 2]
# (name, ranks, run arguments): each is run for real under mpiexec and simulated
CASES = [
    ("se2p-2", 2, ["se2p", *COMMON]),
    ("se2p-3", 3, ["se2p", *COMMON, "--integration", "naive"]),
    ("parasolver-3", 3, ["parasolver", "--sampler", "ddpm", "--model", "gmm", "--steps", 50, "--subintervals", 10,
                         "--precondition", 2, "--window", 6, "--tol", 0.05, "--seed", 1, "--batch", 2]),
    ("paradigms-2", 2, ["paradigms", "--sampler", "ddim", "--model", "gmm", "--steps", 30, "--window", 12,
                        "--tol", 0.01, "--seed", 1, "--batch", 2]),
]
MESSAGE_FIELDS = ("kind", "label", "line", "step", "iter", "t", "peer", "tag", "seq", "nbytes", "batch")


def _profile_file(path, **kw):
    d = dict(format="pardiff-profile", model="gmm", dtype="float32", device="test", batch=[1, 2, 8],
             seconds=[0.010, 0.012, 0.020], first=[0.050, 0.052, 0.060], host=[0.001, 0.001, 0.002])
    d.update(kw)
    path.write_text(json.dumps(d))
    return str(path)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    for name, n, args in CASES:
        pardiff(n, "run", *args, "--out", f"{name}-real.npy", "--trace", f"{name}-real.h5",
                "--report", f"{name}-real.json", cwd=d)
        pardiff(None, "simulate", *args, "--ranks", n, "--network", "ib-hdr", "--out", f"{name}-sim.npy",
                "--trace", f"{name}-sim.h5", "--report", f"{name}-sim.json", cwd=d)
    return d


@pytest.mark.parametrize("name,ranks", [(c[0], c[1]) for c in CASES])
def test_simulated_run_equals_real_run(pairs, name, ranks):
    """Same samples bit for bit, same message sequence on every rank, same iterations."""
    real, sim = load_trace(pairs / f"{name}-real.h5"), load_trace(pairs / f"{name}-sim.h5")
    assert real.world_size == sim.world_size == ranks
    assert real.attrs["clock"] == "wall" and sim.attrs["clock"] == "virtual" and sim.attrs["backend"] == "virtual"
    assert np.array_equal(np.load(pairs / f"{name}-real.npy"), np.load(pairs / f"{name}-sim.npy"))
    for r in range(ranks):
        a, b = real.events[r], sim.events[r]
        assert len(a) == len(b) and len(a) > 0
        for field in MESSAGE_FIELDS:
            assert np.array_equal(a[field], b[field]), (r, field)
    rep_real, rep_sim = (json.loads((pairs / f"{name}-{k}.json").read_text()) for k in ("real", "sim"))
    assert rep_real["nfe"] == rep_sim["nfe"] and rep_real.get("iterations") == rep_sim.get("iterations")
    assert rep_sim["network"]["name"] == "ib-hdr"
    for row in rep_sim["per_rank"]:
        assert {"compute_s", "communication_s", "waiting_s", "idle_s"} <= set(row)


@pytest.mark.parametrize("eval_batch", [0, 1])
def test_replay_of_a_simulated_trace_reproduces_it(tmp_path, eval_batch):
    """Replay applies the virtual Comm's own rules: under the same network and profile it gives
    back every time of the simulated run, first-evaluation costs included (and with --eval-batch 1,
    a window's rows priced in pieces)."""
    prof = _profile_file(tmp_path / "p.json")
    args = ["parasolver", "--sampler", "ddim", "--model", "gmm", "--steps", 40, "--subintervals", 10,
            "--precondition", 2, "--window", 5, "--tol", 0.05, "--seed", 0, "--batch", 1, "--eval-batch", eval_batch]
    pardiff(None, "simulate", *args, "--ranks", 3, "--network", "eth-10g", "--profile", prof, "--trace", "s.h5",
            cwd=tmp_path)
    trace = load_trace(tmp_path / "s.h5")
    new = retime(trace, load_network("eth-10g"), Profile.load(prof))
    for r, ev in trace.events.items():
        for field in ("t_start", "t_ready", "t_end"):
            assert np.allclose(new[r][field], ev[field], rtol=0, atol=1e-12), (r, field)
    compute = trace.events[0][trace.events[0]["kind"] == "compute"]
    assert np.isclose(compute["t_end"][0] - compute["t_start"][0], 0.010)     # --batch 1: warmed before the run
    pardiff(None, "simulate", "--replay", "s.h5", "--network", "eth-10g", "--profile", prof, "--report", "r.json",
            cwd=tmp_path)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["wall_s"] == pytest.approx(report["recorded_wall_s"], abs=1e-12)
    assert report["iterations"] >= 1 and report["nfe"] > 0
    # another network changes the messages' cost, not the structure
    slow = retime(trace, Network("slow", Link(1e-3, 1e6), Link(1e-3, 1e6), 1), Profile.load(prof))
    assert max(ev["t_end"].max() for ev in slow.values()) > max(ev["t_end"].max() for ev in trace.events.values())


def test_replay_of_a_real_trace_under_recorded_costs(pairs, tmp_path):
    """--network recorded keeps every recorded cost: the MPI run's timings come back."""
    trace = load_trace(pairs / "parasolver-3-real.h5")
    new = retime(trace, None, None)
    wall = max(ev["t_end"].max() for ev in trace.events.values())
    for r, ev in trace.events.items():      # up to how well the clocks were aligned (ranks share 2 cores here)
        assert np.allclose(new[r]["t_end"], ev["t_end"], rtol=0, atol=0.01 * wall), r
    pardiff(None, "simulate", "--replay", pairs / "se2p-2-real.h5", "--network", "recorded", "--trace", "rep.h5",
            "--report", "rep.json", cwd=tmp_path)
    rep = load_trace(tmp_path / "rep.h5")
    assert rep.attrs["clock"] == "virtual" and rep.attrs["network"] == "recorded"
    report = json.loads((tmp_path / "rep.json").read_text())
    assert report["wall_s"] == pytest.approx(report["recorded_wall_s"], rel=0.05)


def test_replay_refuses_an_incomplete_trace(pairs, tmp_path):
    r = pardiff(None, "simulate", "--replay", "missing.h5", "--network", "nvlink", cwd=tmp_path, check=False)
    assert r.returncode == 2 and "--replay" in r.stderr


def test_hand_computed_cost_model(tmp_path):
    """Two ranks, compute 10 ms, link 1 ms + 1 MB/s: every time worked out by hand."""
    net = Network("hand", Link(1e-3, 1e6), Link(1e-3, 1e6), 1)
    prof = Profile("gmm", "float32", "test", [1], [0.010], [0.030], [0.002])
    world = World(2, net, prof)
    trace_path = str(tmp_path / "hand.h5")
    errors = []

    def rank_main(r):
        try:
            comm = VirtualComm(world, r)
            comm.recorder = comm.make_recorder(PartWriter(trace_path, r, {"world_size": 2, "clock": "virtual"}, {}),
                                               warm_batches=[1], batch=1)
            rec = comm.recorder
            buf = torch.zeros(250)                                   # 1000 bytes
            if r == 0:
                with rec.span("compute", "eps", "x", batch=1):       # 0 -> 10 ms
                    pass
                comm.send(buf, 1, label="latent", line="x")          # 10 -> 12 ms (1 ms + 1000 B / 1 MB/s)
                with rec.span("compute", "eps", "x", batch=2):       # first at 2: 12 -> 52 ms (20 + 20 extra)
                    pass
            else:
                comm.recv(buf, 0, label="latent", line="x")          # 0 -> 12 ms, waiting all along
                with rec.span("host", "denoise", "x"):               # 12 -> 14 ms
                    pass
            comm.allreduce(torch.zeros(2), label="residual", line="x")   # ring of 2: 2 hops of 1 ms + 4 B / 1 MB/s
            rec.close()
        except BaseException as e:                                   # pragma: no cover - reported below
            errors.append(e)
            comm.abort()

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    merge_parts(trace_path, world_size=2)
    ev = load_trace(trace_path).events
    ms = lambda a: np.round(np.asarray(a) * 1e3, 9).tolist()      # noqa: E731
    assert ms(ev[0]["t_start"]) == [0, 10, 12, 52] and ms(ev[0]["t_end"]) == [10, 12, 52, 54.008]
    assert ms(ev[1]["t_start"]) == [0, 12, 14] and ms(ev[1]["t_ready"][:1]) == [12]
    assert ms(ev[1]["t_end"]) == [12, 14, 54.008]
    assert ms(retime(load_trace(trace_path), net, prof)[0]["t_end"]) == [10, 12, 52, 54.008]


def test_eval_batch_is_warmed_and_charged_piece_by_piece():
    """--eval-batch 4: an evaluation of 10 rows is three network calls (4, 4, 2), each warmed before the
    run and each charged at its own size's time."""
    cfg = RunConfig("se2p", batch=10, eval_batch=4)
    assert warm_batches(cfg, 0, 2) == [2, 4]
    guided = RunConfig("paradigms", batch=3, eval_batch=4, guidance=2.0, steps=6, window=2)
    assert warm_batches(guided, 0, 1) == [2, 4]               # rows 6 and 12 -> pieces 4, 4, 4 and 4, 2
    prof = Profile("gmm", "float32", "test", [1, 4], [0.010, 0.016], [0.030, 0.040])
    rec = VirtualRecorder(0, None, VirtualClock(), prof, warm_batches(cfg, 0, 2), batch=10, eval_batch=4)
    with rec.span("compute", "eps", "x", batch=10):
        pass
    assert rec.now() == pytest.approx(0.016 + 0.016 + 0.012)  # batch 2: between the profile's 1 and 4
    whole = VirtualRecorder(0, None, VirtualClock(), prof, [10], batch=10)
    with whole.span("compute", "eps", "x", batch=10):
        pass
    assert whole.now() == pytest.approx(0.028)               # the profile's line, extended: 10 + 9 x 2 ms


def test_eval_batch_bounds_the_rows_the_network_sees():
    """Context.eps under --eval-batch 2: five rows with per-row timesteps reach the model as 2, 2, 1,
    and the result is the whole batch's, bit for bit (the analytic model is row by row)."""
    from pardiff.models import load_model
    from pardiff.runtime import Context
    model = load_model("gmm")
    whole_eps, calls = model.eps, []
    model.eps = lambda x, t, labels=None: (calls.append(x.shape[0]), whole_eps(x, t, labels))[1]
    comm = VirtualComm(World(1, load_network("nvlink")), 0)
    comm.recorder = comm.make_recorder(None, [1, 2], batch=5, eval_batch=2)
    ctx = Context(RunConfig("sequential", batch=5, eval_batch=2), comm, model, torch.device("cpu"))
    x, t = torch.randn(5, *model.sample_shape, generator=torch.Generator().manual_seed(0)), torch.tensor([900, 700, 500, 300, 100])
    out = ctx.eps(x, t, line="test")
    assert calls == [2, 2, 1]
    assert torch.equal(out, whole_eps(x, t))


def test_network_collectives_and_contention():
    intra, inter = Link(1e-6, 1e9), Link(1e-5, 1e8)
    net = Network("t", intra, inter, 2)                    # nodes {0, 1}, {2, 3}
    n = 1000
    # binomial tree from 0: round 1 0->1 (intra); round 2 0->2 and 1->3 both leave node 0: shared link
    assert net.bcast(4, 0, n) == pytest.approx(intra.time(n) + inter.latency_s + 2 * n / inter.bandwidth_Bps)
    # ring allreduce: 2(P-1) steps of n/P bytes, each as slow as the slowest (inter-node) hop
    assert net.allreduce(4, n) == pytest.approx(6 * inter.time(n / 4))
    assert net.allreduce(1, n) == 0.0
    assert net.message(0, 1, n) == intra.time(n) and net.message(1, 2, n) == inter.time(n)
    assert set(BUILTIN) >= {"nvlink", "pcie", "ib-hdr", "eth-100g", "eth-10g"}


def test_profile_interpolation_and_first_evaluation():
    p = Profile("gmm", "float32", "test", [1, 2, 8], [0.010, 0.012, 0.020], [0.050, 0.052, 0.060])
    assert p.eval_s(4) == pytest.approx(0.012 + 2 * 0.008 / 6)
    assert p.eval_s(10) == pytest.approx(0.020 + 2 * 0.008 / 6)            # extrapolated from the two largest
    assert p.eval_s(4, first=True) == pytest.approx(p.eval_s(4) + 0.040)
    seen = {1}
    assert p.charge(seen, 1) == 0.010 and p.charge(seen, 2) == pytest.approx(0.052) and p.charge(seen, 2) == 0.012
    assert p.host_s(1) == 0.0                                                # no host measurement
    with pytest.raises(ValueError):
        Profile("gmm", "float32", "t", [2, 1], [0.1, 0.2])


def test_fit_link_recovers_a_known_link():
    sizes = [8, 1024, 65536, 786432, 8388608]
    link = fit_link(sizes, [30e-6 + n / 2e9 for n in sizes])
    assert link["latency_s"] == pytest.approx(30e-6, rel=1e-6) and link["bandwidth_Bps"] == pytest.approx(2e9)


def test_bench_comm_on_two_ranks(tmp_path):
    pardiff(2, "bench", "comm", "--sizes", "8,65536,1048576", "--repeats", 3, "--out", "c.json", cwd=tmp_path)
    d = json.loads((tmp_path / "c.json").read_text())
    assert d["ranks"] == 2 and d["path"] == "host" and [r["nbytes"] for r in d["rows"]] == [8, 65536, 1048576]
    assert all(r["one_way_s"] > 0 for r in d["rows"]) and d["fit"]["bandwidth_Bps"] > 0
    one = pardiff(2, "bench", "comm", "--sizes", "8", "--repeats", 2, "--out", "one.json", cwd=tmp_path)
    assert "no link fit" in one.stdout and json.loads((tmp_path / "one.json").read_text())["fit"] is None


def test_bench_model_writes_a_profile(tmp_path):
    pardiff(None, "bench", "model", "--model", "gmm", "--batch", "1,2", "--repeats", 2, "--device", "cpu",
            "--out", "p.json", cwd=tmp_path)
    p = Profile.load(str(tmp_path / "p.json"))
    assert p.batch == [1, 2] and len(p.first) == 2 and len(p.host) == 2 and min(p.seconds) > 0


def test_bench_tracing_alternates_traced_and_untraced_runs(tmp_path):
    pardiff(2, "bench", "tracing", "se2p", "--model", "gmm", "--steps", 8, "--exchange", "swap", "--repeats", 3,
            "--results", "t.json", cwd=tmp_path)
    d = json.loads((tmp_path / "t.json").read_text())
    on, off = d["wall_s_trace_on"], d["wall_s_trace_off"]
    assert d["world_size"] == 2 and d["params"]["exchange"] == "swap" and len(on) == len(off) == 3
    assert d["overhead"] == pytest.approx(statistics.median(on) / statistics.median(off) - 1)
    assert d["overhead_paired"] == pytest.approx(statistics.median(a / b for a, b in zip(on, off)) - 1)
    trace = load_trace(str(tmp_path / "t-trace.h5"))            # the last traced run's
    assert trace.world_size == 2 and d["trace_bytes"] == (tmp_path / "t-trace.h5").stat().st_size
    assert not (tmp_path / "t-off-trace.h5").exists()


def test_sixty_four_ranks_parasolver(tmp_path):
    """The issue's scale case: 1000-step ParaSolver on 64 virtual ranks (seconds here)."""
    pardiff(None, "simulate", "parasolver", "--ranks", 64, "--sampler", "ddim", "--model", "gmm", "--steps", 1000,
            "--subintervals", 100, "--precondition", 2, "--window", 64, "--tol", 0.05, "--seed", 0, "--batch", 1,
            "--network", "ib-hdr", "--report", "big.json", cwd=tmp_path, timeout=120)
    report = json.loads((tmp_path / "big.json").read_text())
    assert report["world_size"] == 64 and len(report["per_rank"]) == 64
    assert 1 <= report["iterations"] <= 100 and report["nfe"] > 0 and report["wall_s"] > 0


@pytest.mark.parametrize("args,flag", [
    (["se2p", "--ranks", 2, "--network", "token-ring"], "--network"),
    (["se2p", "--network", "nvlink"], "--ranks"),
    (["se2p", "--ranks", 2, "--network", "recorded"], "--network"),
    (["se2p", "--ranks", 2, "--profile", "nope.json"], "--profile"),
    (["se2p", "--ranks", 2, "--profile", "h300"], "--profile"),
    (["se2p", "--ranks", 2, "--stand-in"], "--stand-in"),
    (["se2p", "--ranks", 1], "--ranks"),
    (["se2p", "--ranks", 2, "--gamma", 2], "--gamma"),
    (["se2p", "--ranks", 2, "--ranks-per-node", 0], "--ranks-per-node"),
    (["se2p", "--replay", "x.h5"], "--replay"),
])
def test_simulate_flag_errors(tmp_path, args, flag):
    r = pardiff(None, "simulate", *args, cwd=tmp_path, check=False)
    assert r.returncode == 2 and flag in r.stderr, r.stderr


PS_WINDOW = ["--model", "gmm", "--sampler", "ddim", "--steps", 50, "--subintervals", 25, "--precondition", 3,
             "--window", 6, "--seed", 1]


def test_simulate_follows_a_measured_runs_strides(tmp_path):
    """--strides: the simulated run makes the measured run's iterations, windows and NFE even where
    its own model would decide otherwise (here δ = 0, which alone sweeps point by point)."""
    pardiff(None, "run", "parasolver", *PS_WINDOW, "--tol", 0.05, "--report", "real.json", cwd=tmp_path)
    pardiff(None, "simulate", "parasolver", "--ranks", 3, *PS_WINDOW, "--tol", 0, "--strides", "real.json",
            "--report", "sim.json", cwd=tmp_path)
    pardiff(None, "simulate", "parasolver", "--ranks", 3, *PS_WINDOW, "--tol", 0, "--report", "own.json", cwd=tmp_path)
    real, sim, own = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("real", "sim", "own"))
    columns = lambda r: [(i["begin"], i["window"], i["stride"], i["nfe"]) for i in r["per_iteration"]]  # noqa: E731
    assert columns(sim) == columns(real) and sim["nfe"] == real["nfe"] and sim["strides_from"] == "real.json"
    assert own["iterations"] > real["iterations"]


@pytest.mark.parametrize("args,message", [
    (["parasolver", *PS_WINDOW[:-4], "--window", 8], "--window 6"),
    (["paradigms", "--model", "gmm", "--sampler", "ddim", "--steps", 50, "--window", 6], "'parasolver' run"),
    (["se2p", "--model", "gmm"], "only the window solvers"),
    (["parasolver", *PS_WINDOW, "--tamper"], "add up to"),
])
def test_strides_that_do_not_fit_are_refused(tmp_path, args, message):
    pardiff(None, "run", "parasolver", *PS_WINDOW, "--tol", 0.05, "--report", "real.json", cwd=tmp_path)
    if "--tamper" in args:
        args = args[:-1]
        report = json.loads((tmp_path / "real.json").read_text())
        report["per_iteration"].pop()
        (tmp_path / "real.json").write_text(json.dumps(report))
    r = pardiff(None, "simulate", args[0], "--ranks", 2, *args[1:], "--strides", "real.json", cwd=tmp_path,
                check=False)
    assert r.returncode == 2 and "--strides" in r.stderr and message in r.stderr, r.stderr


def test_profile_for_another_model_is_refused(tmp_path):
    prof = _profile_file(tmp_path / "p.json", model="arch:sd2-unet")
    r = pardiff(None, "simulate", "se2p", "--ranks", 2, "--profile", prof, cwd=tmp_path, check=False)
    assert r.returncode == 2 and "--profile" in r.stderr and "arch:sd2-unet" in r.stderr


def test_stand_in_keeps_shape_and_schedule(tmp_path):
    from pardiff.models import load_model
    from pardiff.sim.execute import stand_in_model
    m = stand_in_model("arch:sd2-unet", "cpu")
    assert m.sample_shape == (4, 64, 64) and m.name == "arch:sd2-unet"
    with pytest.raises(ValueError):
        stand_in_model("gmm", "cpu")
    pardiff(None, "simulate", "se2p", "--ranks", 2, "--model", "arch:ddpm-church-256", "--dtype", "float16",
            "--steps", 10, "--profile", "h200", "--stand-in", "--network", "h200-mpi-staged", "--report", "s.json",
            cwd=tmp_path)
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["profile"]["device"] == "NVIDIA H200" and report["stand_in"].startswith("gmm")
    assert 0.1 < report["wall_s"] < 1.0          # 20 evaluations of ~17.5 ms on H200, priced, not run here
    assert load_model("gmm").sample_shape == (3, 32, 32)
