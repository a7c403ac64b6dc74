"""GPU paths: CUDA graphs and host staging (pinned, shared). Skipped without a GPU; run on the GPU machine with
``python -m pytest tests/test_gpu.py`` (results of the last run: docs/performance.md)."""
import numpy as np
import pytest
import torch

from conftest import TEST_ENV, pardiff

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("arch,dtype,batches", [
    ("ddpm-church-256", torch.float16, [1, 3]),
    ("ddpm-church-256", torch.float32, [2]),
    ("dit-xl-2-256", torch.float16, [2]),
])
def test_cuda_graph_replay_equals_eager(arch, dtype, batches):
    from pardiff.models.hub import load_arch
    model = load_arch(arch, device="cuda", dtype=dtype)
    g = torch.Generator(device="cuda").manual_seed(0)
    cases = []
    for b in batches:
        x = torch.randn(b, *model.sample_shape, device="cuda", generator=g)
        t = torch.randint(0, 1000, (b,))
        labels = torch.arange(b, device="cuda") if model.num_classes else None
        cases.append((x, t, labels, model.eps(x, t, labels)))
    model.enable_cuda_graphs()
    for _ in range(2):                       # the capture, then a plain replay
        for x, t, labels, eager in cases:
            replay = model.eps(x, t, labels)
            assert replay.shape == eager.shape and replay.data_ptr() != eager.data_ptr()
            assert torch.equal(replay, eager), (arch, dtype, x.shape[0], (replay - eager).abs().max().item())
    assert model.graphs.captures == len(batches)


def test_graphs_do_not_change_a_sequential_sample(tmp_path):
    for mode in ("off", "on"):
        pardiff(None, "run", "sequential", "--model", "arch:ddpm-church-256", "--dtype", "float16", "--sampler",
                "ddim", "--steps", 5, "--device", "cuda", "--cuda-graphs", mode, "--out", f"{mode}.npy", cwd=tmp_path)
    assert np.array_equal(np.load(tmp_path / "off.npy"), np.load(tmp_path / "on.npy"))


def test_tf32_off_keeps_a_converged_parasolver_sample_on_the_sequential_one(tmp_path):
    """ParaSolver with N = M = 5 on DDIM-30 converges in 5 iterations to the sequential sampler's
    fixed point; what is left is rounding. With PyTorch's default TF32 convolutions the batch sizes
    pick other kernels and it reaches ~1e-4 (lfw-32 on an H100); --tf32 off brings it to float32's."""
    common = ["--model", "lfw-32", "--sampler", "ddim", "--steps", 30, "--batch", 8, "--seed", 1, "--device", "cuda"]
    err = {}
    for mode in ("default", "off"):
        pardiff(None, "run", "sequential", *common, "--tf32", mode, "--out", f"seq-{mode}.npy", cwd=tmp_path)
        pardiff(None, "run", "parasolver", *common, "--tf32", mode, "--subintervals", 5, "--precondition", 5,
                "--window", 5, "--tol", 0.005, "--out", f"ps-{mode}.npy", cwd=tmp_path)
        d = np.load(tmp_path / f"ps-{mode}.npy").astype(np.float64) - np.load(tmp_path / f"seq-{mode}.npy")
        err[mode] = float(np.sqrt((d ** 2).mean()))
    print(err)
    assert err["off"] < 1e-5 and err["off"] < err["default"] / 10, err


def test_graphs_of_many_batch_sizes_share_their_memory(tmp_path):
    """ParaDiGMS with a window of 16 on one GPU evaluates every batch size 1..16, each from its
    own CUDA graph; captured largest first into one pool, they hold less than twice what the
    largest alone does (smallest first, each size kept its own: ParaSolver p = 64 ran out of an
    H100's 80 GB)."""
    import json
    common = ["--model", "arch:ddpm-church-256", "--dtype", "float16", "--sampler", "ddim", "--steps", 16,
              "--device", "cuda"]
    pardiff(None, "run", "sequential", *common, "--batch", 16, "--report", "one.json", cwd=tmp_path)
    pardiff(None, "run", "paradigms", *common, "--window", 16, "--report", "all.json", cwd=tmp_path)
    one, every = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "all.json"))
    assert every["params"]["window"] == 16 and one["per_rank"][0]["gpu_memory_peak_gib"] > 0
    peaks = every["per_rank"][0]["gpu_memory_peak_gib"], one["per_rank"][0]["gpu_memory_peak_gib"]
    # H100, 2026-11-24: 9.10 GiB against 5.24 (eager warm-up cache + graph pool, each about the
    # largest size's activations); smallest first, it grows with the sum of the sizes
    assert peaks[0] <= 2.0 * peaks[1] + 0.5, f"GiB held: sizes 1..16 {peaks[0]:.2f}, size 16 alone {peaks[1]:.2f}"


@pytest.mark.parametrize("staging,extra", [
    ("pinned", []),
    ("shared", ["--staging", "shared"]),
    ("shared", ["--staging", "shared", "--exchange", "swap"]),      # isend: headers in flight
])
def test_host_staging_between_ranks_on_one_gpu(tmp_path, staging, extra):
    """Two MPI ranks on one GPU (no NCCL: it refuses two ranks on one GPU) move latents through
    pinned host buffers, or through the node's shared arena; the sample is the simulator's (same
    GPU arithmetic, bytes copied)."""
    args = ["se2p", "--model", "arch:ddpm-church-256", "--dtype", "float16", "--steps", 10, "--device", "cuda"]
    one_gpu = {**TEST_ENV, "CUDA_VISIBLE_DEVICES": "0"}     # on a machine with more, auto would pick NCCL
    pardiff(2, "run", *args, *extra, "--out", "real.npy", "--trace", "real.h5", cwd=tmp_path, env=one_gpu)
    pardiff(None, "simulate", *args, "--ranks", 2, *extra[2:], "--out", "sim.npy", cwd=tmp_path, env=one_gpu)
    assert np.array_equal(np.load(tmp_path / "real.npy"), np.load(tmp_path / "sim.npy"))
    from pardiff.trace.reader import load_trace
    trace = load_trace(tmp_path / "real.h5")
    latents = [e for r in trace.ranks for e in trace.events[r]
               if e["kind"] in ("send", "recv") and e["label"] in ("x_pred", "latent")]
    assert latents and {str(e["path"]) for e in latents} == {staging}
    assert trace.attrs["backend"] == "mpi"


def test_eval_batch_pieces_replay_from_cuda_graphs(tmp_path):
    """--eval-batch on a GPU: the warm-up captures one CUDA graph per piece size (4 and 2 for 6 rows),
    replaying them gives the eager pieces' sample bit for bit, and float32 pieces give the whole-batch
    sample up to the convolutions' rounding at another batch size (what the 5120-sample studies rely on)."""
    args = ["se2p", "--model", "lfw-32", "--steps", 10, "--batch", 6, "--seed", 1, "--device", "cuda", "--tf32", "off"]
    one_gpu = {**TEST_ENV, "CUDA_VISIBLE_DEVICES": "0"}
    pardiff(2, "run", *args, "--out", "whole.npy", cwd=tmp_path, env=one_gpu)
    for mode in ("off", "on"):
        pardiff(2, "run", *args, "--eval-batch", 4, "--cuda-graphs", mode, "--out", f"pieces-{mode}.npy",
                cwd=tmp_path, env=one_gpu)
    off, on = np.load(tmp_path / "pieces-off.npy"), np.load(tmp_path / "pieces-on.npy")
    assert np.array_equal(off, on)
    np.testing.assert_allclose(on, np.load(tmp_path / "whole.npy"), rtol=0, atol=1e-4)


def test_shared_staging_gives_parasolver_the_pinned_sample(tmp_path):
    """ParaSolver's messages (points and drifts of every window size) through a 1 MiB shared lane,
    some too large for it (they go the pinned way after their header): the pinned path's sample."""
    args = ["parasolver", "--model", "lfw-32", "--sampler", "ddim", "--steps", 20, "--batch", 16,
            "--window", 4, "--device", "cuda", "--transport", "mpi"]
    one_gpu = {**TEST_ENV, "CUDA_VISIBLE_DEVICES": "0"}
    pardiff(2, "run", *args, "--out", "pinned.npy", cwd=tmp_path, env=one_gpu)
    pardiff(2, "run", *args, "--staging", "shared", "--staging-lane-mb", 1, "--out", "shared.npy",
            "--trace", "shared.h5", cwd=tmp_path, env=one_gpu)
    assert np.array_equal(np.load(tmp_path / "pinned.npy"), np.load(tmp_path / "shared.npy"))
    from pardiff.trace.reader import load_trace
    trace = load_trace(tmp_path / "shared.h5")
    paths = {str(e["path"]) for r in trace.ranks for e in trace.events[r]
             if e["kind"] in ("send", "recv") and e["nbytes"] > 4096}
    assert "shared" in paths, paths


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (NCCL refuses two ranks on one)")
def test_nccl_messages_are_stream_ordered_and_timed_on_the_gpu(tmp_path):
    """SE2P over NCCL on two GPUs: the samples of the MPI (pinned) path, traced and untraced;
    the NCCL rows are timed with CUDA events, in the stream's order on each rank, and replay under the
    recorded costs gives the run's span back."""
    from pardiff.sim.replay import retime
    from pardiff.trace.reader import load_trace
    args = ["se2p", "--model", "arch:ddpm-church-256", "--dtype", "float16", "--steps", 10, "--device", "cuda",
            "--exchange", "swap"]
    pardiff(2, "run", *args, "--transport", "mpi", "--out", "mpi.npy", cwd=tmp_path)
    pardiff(2, "run", *args, "--transport", "nccl", "--out", "nccl.npy", cwd=tmp_path)
    pardiff(2, "run", *args, "--transport", "nccl", "--out", "traced.npy", "--trace", "t.h5", cwd=tmp_path)
    mpi = np.load(tmp_path / "mpi.npy")
    assert np.array_equal(np.load(tmp_path / "nccl.npy"), mpi)
    assert np.array_equal(np.load(tmp_path / "traced.npy"), mpi)
    trace = load_trace(tmp_path / "t.h5")
    assert trace.attrs["backend"] == "nccl"
    for r in trace.ranks:
        ev = trace.events[r]
        assert trace.rank_attrs[r]["timing"] == "cuda-events"
        latents = ev[np.isin(ev["label"], ["x_pred", "latent"]) & np.isin(ev["kind"], ["send", "recv", "wait"])]
        assert len(latents) and (latents["path"] == "nccl").all()
        on_gpu = ev[np.isin(ev["kind"], ["compute", "host"]) | (ev["path"] == "nccl")]
        assert (np.diff(on_gpu["t_start"]) >= -1e-6).all()           # the stream's order
        # the host did not wait for the messages: some evaluation after a receive was issued
        # before that receive's transfer ended on the GPU (a host wait per message forbids it)
        issued_early = [e["t_ready"] < recv["t_end"] for i, recv in enumerate(ev)
                        if recv["kind"] == "recv" and recv["path"] == "nccl"
                        for e in ev[i + 1:][ev[i + 1:]["kind"] == "compute"][:1]]
        assert issued_early and any(issued_early)
    new = retime(trace)
    span = max(float(ev["t_end"].max()) for ev in trace.events.values())
    assert max(float(ev["t_end"].max()) for ev in new.values()) == pytest.approx(span, rel=1e-3)


def test_traced_gpu_run_is_timed_by_cuda_events(tmp_path):
    """A traced GPU run times compute and host rows with CUDA events (no host sync per
    evaluation): same sample as untraced, rows in start order, replay gives its wall time back."""
    import json

    from pardiff.sim.replay import retime
    from pardiff.trace.reader import load_trace
    args = ["sequential", "--model", "arch:ddpm-church-256", "--dtype", "float16", "--sampler", "ddpm",
            "--steps", 20, "--device", "cuda"]
    pardiff(None, "run", *args, "--out", "off.npy", cwd=tmp_path)
    pardiff(None, "run", *args, "--out", "on.npy", "--trace", "on.h5", "--report", "on.json", cwd=tmp_path)
    assert np.array_equal(np.load(tmp_path / "off.npy"), np.load(tmp_path / "on.npy"))
    trace = load_trace(tmp_path / "on.h5")
    assert trace.rank_attrs[0]["timing"] == "cuda-events"
    ev = trace.events[0]
    compute = ev[ev["kind"] == "compute"]
    assert len(compute) == 20 and (compute["t_end"] > compute["t_start"]).all()
    assert (compute["t_ready"] <= compute["t_start"]).all()                # issued before the GPU ran it
    assert (np.diff(ev["t_start"]) >= -1e-6).all()                         # GPU rows in start order
    wall = json.loads((tmp_path / "on.json").read_text())["wall_s"]
    gpu = float((compute["t_end"] - compute["t_start"]).sum())
    assert 0.5 * wall < gpu <= wall * 1.01                                 # GPU time, not launch time
    new = retime(trace)
    assert max(new[0]["t_end"]) == pytest.approx(max(ev["t_end"]), rel=1e-6)


def test_the_first_step_pays_no_kernel_loading(tmp_path):
    """One-time costs happen before the clock: with CUDA's lazy kernel loading a DDPM run's first
    step loaded every step kernel the network's warm-up had not launched (27-51 ms on an H200,
    ~0.1 ms for the later steps). pardiff loads them when the context starts."""
    import json

    from pardiff.trace.reader import load_trace
    pardiff(None, "run", "sequential", "--model", "arch:ddpm-church-256", "--dtype", "float16", "--sampler", "ddpm",
            "--steps", 10, "--device", "cuda", "--trace", "t.h5", "--report", "r.json", cwd=tmp_path,
            env={k: v for k, v in TEST_ENV.items() if k != "CUDA_MODULE_LOADING"})
    assert json.loads((tmp_path / "r.json").read_text())["versions"]["cuda_module_loading"] == "EAGER"
    ev = load_trace(tmp_path / "t.h5").events[0]
    host = ev[ev["kind"] == "host"]
    spans = host["t_end"] - host["t_start"]
    assert len(spans) == 10 and spans[0] < 0.005, spans[:3]


def test_compiled_network_is_close_to_eager_and_graphs_replay_it_exactly():
    """torch.compile's kernels differ from eager ones in the last bits, not more; a CUDA graph
    captured of the compiled pass replays it bit for bit."""
    from pardiff.models.hub import load_arch
    model = load_arch("ddpm-church-256", device="cuda", dtype=torch.float16)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, *model.sample_shape, device="cuda", generator=g)
    t = torch.tensor([999, 500])
    eager = model.eps(x, t)
    model.enable_compile()
    compiled = model.eps(x, t)
    assert (compiled - eager).abs().max().item() < 0.05
    assert (compiled - eager).pow(2).mean().sqrt().item() < 2e-3 * eager.pow(2).mean().sqrt().item() + 1e-3
    model.enable_cuda_graphs()
    for _ in range(2):
        assert torch.equal(model.eps(x, t), compiled)


def test_compile_flag_runs_a_sequential_sample(tmp_path):
    args = ["sequential", "--model", "arch:ddpm-church-256", "--dtype", "float16", "--sampler", "ddim", "--steps", 5,
            "--device", "cuda"]
    for mode in ("off", "on"):
        pardiff(None, "run", *args, "--compile", mode, "--out", f"{mode}.npy", "--report", f"{mode}.json",
                cwd=tmp_path)
    off, on = np.load(tmp_path / "off.npy"), np.load(tmp_path / "on.npy")
    assert np.sqrt(((off - on) ** 2).mean()) < 0.02          # another set of kernels, the same sampler
    import json
    assert json.loads((tmp_path / "on.json").read_text())["params"]["compile"] == "on"
