"""SE2P on real MPI ranks (mpiexec -n 2/3/4) against the independent reference and the paper's invariants."""
from collections import Counter

import numpy as np
import pytest
import torch

import reference_se2p as ref
from conftest import pardiff
from pardiff.models import load_model
from pardiff.trace.reader import load_trace

STEPS, SEED, BATCH, GAMMA, RHO = 10, 3, 2, 0.015, 1.35
COMMON = ["--model", "gmm", "--steps", STEPS, "--seed", SEED, "--batch", BATCH]

# name -> (ranks, extra flags); every job runs once per test session.
JOBS = {
    "seq": (1, ["run", "sequential", "--sampler", "ddpm"]),
    "p2": (2, ["run", "se2p", "--gamma", GAMMA, "--rho", RHO]),
    "p3": (3, ["run", "se2p", "--gamma", GAMMA, "--rho", RHO]),
    "p4": (4, ["run", "se2p", "--gamma", GAMMA, "--rho", RHO]),
    "g1_p2": (2, ["run", "se2p", "--gamma", 1]),
    "g1_p3": (3, ["run", "se2p", "--gamma", 1]),
    "naive_p2": (2, ["run", "se2p", "--integration", "naive"]),
    "naive_p3": (3, ["run", "se2p", "--integration", "naive"]),
    "tk1_p2": (2, ["run", "se2p", "--integration", "predictor-tk1", "--rho", 1.55]),
    "tk1_p3": (3, ["run", "se2p", "--integration", "predictor-tk1"]),
    "precomputed_p2": (2, ["run", "se2p", "--seed-sharing", "precomputed"]),
    "proc0_p3": (3, ["run", "se2p", "--return-latent", "proc0"]),
    "printed_p2": (2, ["run", "se2p", "--mu-pred", "as-printed"]),
    "printed_p3": (3, ["run", "se2p", "--mu-pred", "as-printed"]),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run every job under mpiexec; returns name -> (sample array, trace path)."""
    d = tmp_path_factory.mktemp("se2p")
    out = {}
    for name, (n, args) in JOBS.items():
        pardiff(n, *args, *COMMON, "--out", f"{name}.npy", "--trace", f"{name}.h5", cwd=d)
        out[name] = (np.load(d / f"{name}.npy"), d / f"{name}.h5")
    return out


@pytest.fixture(scope="module")
def model():
    return load_model("gmm")


def close(a, b):
    return np.allclose(a, b, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("P", [2, 3, 4])
def test_matches_reference(runs, model, P):
    expected = ref.algorithm2(model, STEPS, P, SEED, BATCH, GAMMA, RHO)[P - 1]
    got = runs[f"p{P}"][0]
    assert got.shape == (BATCH, 3, 32, 32)
    assert close(got, expected.numpy()), np.abs(got - expected.numpy()).max()


@pytest.mark.parametrize("variant,P", [("naive", 2), ("naive", 3), ("tk1", 2), ("tk1", 3)])
def test_ablations_match_reference(runs, model, variant, P):
    rho = 1.55 if (variant, P) == ("tk1", 2) else RHO
    integration = "naive" if variant == "naive" else "predictor-tk1"
    expected = ref.algorithm2(model, STEPS, P, SEED, BATCH, GAMMA, rho, integration)[P - 1]
    assert close(runs[f"{variant}_p{P}"][0], expected.numpy())


def test_two_procs_match_algorithm1(runs, model):
    # pardiff runs Algorithm 1 at P = 2; the reference's algorithm1 is written apart from algorithm2
    assert close(runs["p2"][0], ref.algorithm1(model, STEPS, SEED, BATCH, GAMMA, RHO)[1].numpy())


def test_as_printed_predictor_matches_reference(runs, model):
    """--mu-pred as-printed: Algorithm 1's typeset line 7 at P = 2 (√ᾱ on x), Algorithm 2's line 8
    at P = 3 (√α on x), both over √(1-ᾱ)."""
    # these jobs run at the flags' defaults, γ = 0.015 and ρ = 1.35 (GAMMA, RHO)
    a1 = ref.algorithm1(model, STEPS, SEED, BATCH, GAMMA, RHO, mu_pred="as-printed")[1]
    a2 = ref.algorithm2(model, STEPS, 3, SEED, BATCH, GAMMA, RHO, mu_pred="as-printed")[2]
    assert close(runs["printed_p2"][0], a1.numpy()) and close(runs["printed_p3"][0], a2.numpy())
    assert not close(runs["printed_p3"][0], ref.algorithm2(model, STEPS, 3, SEED, BATCH, GAMMA, RHO)[2].numpy())


def test_reference_algorithm2_with_two_procs_is_algorithm1(model):
    x0, x1 = ref.algorithm1(model, STEPS, SEED, BATCH, GAMMA, RHO)
    y = ref.algorithm2(model, STEPS, 2, SEED, BATCH, GAMMA, RHO)
    assert torch.allclose(x1, y[1], atol=1e-6) and torch.allclose(x0, y[0], atol=1e-6)


def test_sequential_matches_reference(runs, model):
    assert close(runs["seq"][0], ref.sequential(model, STEPS, SEED, BATCH).numpy())


@pytest.mark.parametrize("P", [2, 3])
def test_gamma_one_reproduces_sequential(runs, P):
    # γ = 1 gives the predictor weight zero: Proc P-1 runs the baseline chain with the shared seeds.
    assert np.array_equal(runs[f"g1_p{P}"][0], runs["seq"][0])


def test_variants_differ(runs):
    samples = {name: runs[name][0] for name in ("seq", "p2", "naive_p2", "tk1_p2", "printed_p2")}
    names = list(samples)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(samples[a] - samples[b]).max() > 1e-3, (a, b)


def test_seed_sharing_modes_give_the_same_sample(runs):
    assert np.array_equal(runs["precomputed_p2"][0], runs["p2"][0])
    trace = load_trace(str(runs["precomputed_p2"][1]))
    assert not any((ev["label"] == "seed").any() for ev in trace.events.values())


def test_return_proc0(runs, model):
    expected = ref.algorithm2(model, STEPS, 3, SEED, BATCH, GAMMA, RHO)[0]
    assert close(runs["proc0_p3"][0], expected.numpy())


@pytest.mark.parametrize("P", [2, 3, 4])
def test_trace_messages_and_timesteps(runs, P):
    trace = load_trace(str(runs[f"p{P}"][1]))
    alg = "A1" if P == 2 else "A2"
    assert trace.world_size == P and trace.ranks == list(range(P))
    assert trace.attrs["algorithm"] == "se2p" and trace.attrs["params"]["gamma"] == GAMMA
    N = STEPS
    ts = ref.jump_steps(N)
    for p, ev in trace.events.items():
        evals = ev[(ev["kind"] == "compute") & (ev["label"] == "eps")]
        # N model evaluations per proc, Proc p at t_k + P - 1 - p, k = N-1 .. 0
        assert list(evals["t"]) == [ts[k] + P - 1 - p for k in range(N - 1, -1, -1)]
        assert list(evals["step"]) == list(range(N - 1, -1, -1))
        assert set(evals["line"]) == {f"SE2P-{alg}:{15 if alg == 'A1' else 17}"}
    sends = Counter()
    for p, ev in trace.events.items():
        for row in ev[ev["kind"] == "send"]:
            sends[(p, int(row["peer"]), row["label"], row["line"])] += 1
    L = {"A1": dict(init=2, integrate=9, sync=10, seed=12, ret=19),
         "A2": dict(init=2, integrate=10, sync=11, seed=14, ret=21)}[alg]
    expected = Counter()
    for q in range(1, P):
        expected[(0, q, "latent", f"SE2P-{alg}:{L['init']}")] = 1
        expected[(0, q, "seed", f"SE2P-{alg}:{L['seed']}")] = N
        expected[(q - 1, q, "x_pred", f"SE2P-{alg}:{L['integrate']}")] = N - 1
        expected[(q, q - 1, "latent", f"SE2P-{alg}:{L['sync']}")] = N - 1
    expected[(P - 1, 0, "latent", f"SE2P-{alg}:{L['ret']}")] += 1
    assert sends == expected
    latent_bytes = BATCH * 3 * 32 * 32 * 4
    for send, recv in trace.messages():
        assert send["nbytes"] == recv["nbytes"] == (8 if send["label"] == "seed" else latent_bytes)
        assert send["path"] == recv["path"] == "host"
        assert recv["t_end"] >= recv["t_ready"] >= recv["t_start"]
    assert len(trace.messages()) == sum(expected.values())


def test_steps_20_three_ranks_naive(tmp_path, model):
    pardiff(3, "run", "se2p", "--integration", "naive", "--model", "gmm", "--steps", 20, "--out", "abl.npy",
            cwd=tmp_path)
    expected = ref.algorithm2(model, 20, 3, 0, 1, GAMMA, RHO, "naive")[2]
    assert close(np.load(tmp_path / "abl.npy"), expected.numpy())
