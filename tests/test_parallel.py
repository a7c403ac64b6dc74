"""ParaSolver and ParaDiGMS on 1, 2 and 3 MPI ranks: the papers' invariants and independent references."""
import json

import numpy as np
import pytest
import torch

import reference_parallel as ref
from conftest import pardiff
from pardiff.models import load_model
from pardiff.trace.reader import load_trace

SAMPLERS = ["ddpm", "ddim", "dpmsolver"]
COMMON = ["--model", "gmm", "--steps", 50, "--seed", 1, "--batch", 2]
PS = ["run", "parasolver", "--subintervals", 10, "--precondition", 2, "--window", 10]
PSW = ["run", "parasolver", "--subintervals", 25, "--precondition", 3, "--window", 6]   # window < N: Lines 8-9 run
PSV = ["run", "parasolver", "--subintervals", 50, "--precondition", 2, "--window", 10, "--sampler", "ddim",
       "--tol", 0.05]                                                    # where reading 6 changes the strides
PD = ["run", "paradigms", "--window", 12]
PD_TOL = {"ddpm": 0.1, "ddim": 0.01, "dpmsolver": 0.01}     # ParaDiGMS's tolerances (Shih et al. Table 5)


def jobs():
    out = {}
    for s in SAMPLERS:
        out[f"seq-{s}"] = (1, ["run", "sequential", "--sampler", s])
        for n in (1, 2, 3):
            out[f"ps0-{s}-{n}"] = (n, [*PS, "--sampler", s, "--tol", 0])
            out[f"pd0-{s}-{n}"] = (n, [*PD, "--sampler", s, "--tol", 0])
            out[f"ps-{s}-{n}"] = (n, [*PS, "--sampler", s, "--tol", 0.05])
        for n in (1, 3):
            out[f"pd-{s}-{n}"] = (n, [*PD, "--sampler", s, "--tol", PD_TOL[s]])
            out[f"psw-{s}-{n}"] = (n, [*PSW, "--sampler", s, "--tol", 0.05])
            out[f"psw0-{s}-{n}"] = (n, [*PSW, "--sampler", s, "--tol", 0])
    for reading in ("step", "authors"):
        out[f"psv-{reading}-2"] = (2, [*PSV, "--last-variance", reading])
    for n in (1, 3):
        out[f"psw-settled-dpmsolver-{n}"] = (n, [*PSW, "--sampler", "dpmsolver", "--tol", 0.05,
                                                 "--missing-history", "settled"])
    out["psw0-settled-dpmsolver-1"] = (1, [*PSW, "--sampler", "dpmsolver", "--tol", 0, "--missing-history", "settled"])
    out["psw-last-ddim-2"] = (2, [*PSW, "--sampler", "ddim", "--tol", 0.05, "--clean-estimate", "last"])
    out["ps-n1"] = (2, ["run", "parasolver", "--sampler", "ddim", "--subintervals", 1, "--precondition", 0,
                        "--tol", 0.05])
    out["ps-trace"] = (2, [*PS, "--sampler", "ddim", "--tol", 0.05, "--trace", "ps.h5"])
    return out


def _not_json(constant):
    raise ValueError(f"a report holds {constant}, which JSON does not allow (strict parsers refuse the file)")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("parallel")
    out = {}
    for name, (n, args) in jobs().items():
        pardiff(n, *args, *COMMON, "--out", f"{name}.npy", "--report", f"{name}.json", cwd=d)
        out[name] = (np.load(d / f"{name}.npy"), json.loads((d / f"{name}.json").read_text(),
                                                            parse_constant=_not_json))
    out["dir"] = d
    return out


@pytest.fixture(scope="module")
def model():
    return load_model("gmm")


ZERO_TOL = [("ps0", n) for n in (1, 2, 3)] + [("pd0", n) for n in (1, 2, 3)] + [("psw0", n) for n in (1, 3)]


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("alg,ranks", ZERO_TOL)
def test_zero_tolerance_gives_the_sequential_sample(runs, alg, sampler, ranks):
    seq = runs[f"seq-{sampler}"][0]
    got, report = runs[f"{alg}-{sampler}-{ranks}"]
    assert np.allclose(got, seq, atol=1e-5), np.abs(got - seq).max()
    assert report["world_size"] == ranks


def test_one_subinterval_is_sequential_sampling(runs):
    got, report = runs["ps-n1"]
    assert np.allclose(got, runs["seq-ddim"][0], atol=1e-5)
    assert report["iterations"] == 1 and report["nfe"] == 50


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_tolerance_saves_iterations_and_stays_close(runs, sampler):
    seq = runs[f"seq-{sampler}"][0]
    for alg, bound in (("ps", 10), ("pd", 50)):
        got, report = runs[f"{alg}-{sampler}-1"]
        assert report["iterations"] < bound, (alg, report["iterations"])
        assert np.abs(got - seq).max() < 0.02, (alg, np.abs(got - seq).max())


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_results_do_not_depend_on_the_number_of_ranks(runs, sampler):
    for alg, ranks in (("ps", (2, 3)), ("pd", (3,)), ("ps0", (2, 3)), ("pd0", (2, 3)), ("psw", (3,)), ("psw0", (3,))):
        one, r1 = runs[f"{alg}-{sampler}-1"]
        for n in ranks:
            got, rn = runs[f"{alg}-{sampler}-{n}"]
            assert np.array_equal(got, one), (alg, n)
            assert rn["iterations"] == r1["iterations"] and rn["nfe"] == r1["nfe"]
            assert [i["stride"] for i in rn["per_iteration"]] == [i["stride"] for i in r1["per_iteration"]]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_parasolver_matches_the_reference(runs, model, sampler):
    x, strides = ref.parasolver(model, sampler, 50, 10, 2, 10, 0.05, 1, 2)
    got, report = runs[f"ps-{sampler}-2"]
    assert [i["stride"] for i in report["per_iteration"]] == strides
    assert np.allclose(got, x.numpy(), atol=1e-4)


@pytest.mark.parametrize("sampler,estimate,job", [("ddpm", "first", "psw-ddpm-3"), ("ddim", "first", "psw-ddim-3"),
                                                  ("ddim", "last", "psw-last-ddim-2")])
def test_parasolver_with_a_sliding_window_matches_the_reference(runs, model, sampler, estimate, job):
    x, strides = ref.parasolver(model, sampler, 50, 25, 3, 6, 0.05, 1, 2, clean_estimate=estimate)
    got, report = runs[job]
    assert len(strides) > 1 and [i["stride"] for i in report["per_iteration"]] == strides
    assert np.allclose(got, x.numpy(), atol=1e-4)


def test_clean_estimate_readings_differ(runs):
    assert not np.array_equal(runs["psw-last-ddim-2"][0], runs["psw-ddim-3"][0])


@pytest.mark.parametrize("reading", ["step", "authors"])
def test_last_variance_readings_match_the_reference(runs, model, reading):
    x, strides = ref.parasolver(model, "ddim", 50, 50, 2, 10, 0.05, 1, 2, last_variance=reading)
    got, report = runs[f"psv-{reading}-2"]
    assert [i["stride"] for i in report["per_iteration"]] == strides
    assert np.allclose(got, x.numpy(), atol=1e-4)


def test_only_the_authors_last_variance_lets_the_last_point_pass_moving(runs):
    """Reading 6: with the last step's σ² = 0 the last point passes Eq. 14 only unchanged; the
    authors' nonzero σ² accepts it moving, which saves an iteration here."""
    step, authors = runs["psv-step-2"][1], runs["psv-authors-2"][1]
    last = [it["residuals"][-1] for r in (step, authors) for it in r["per_iteration"][-1:]]
    assert last[0] in (0.0, None) and 0 < last[1] <= 0.05
    assert authors["iterations"] < step["iterations"]


def test_settled_missing_history_reading(runs):
    """Reading 7's other reading: a new point of a multistep sampler, without a previous x̂_0,
    is judged by its latent alone: fewer iterations, still the same on any number of ranks, still
    the sequential sample at δ = 0, and every new point gets a finite residual (where σ > 0)."""
    unsettled, settled = runs["psw-dpmsolver-1"], runs["psw-settled-dpmsolver-1"]
    assert settled[1]["iterations"] < unsettled[1]["iterations"]
    assert np.array_equal(runs["psw-settled-dpmsolver-3"][0], settled[0])
    seq = runs["seq-dpmsolver"][0]
    assert np.allclose(runs["psw0-settled-dpmsolver-1"][0], seq, atol=1e-5)

    def no_residual(report):        # points without a finite residual, other than N-1 and N (σ = 0 there)
        N = report["subintervals"]
        return [i for it in report["per_iteration"] for i, r in enumerate(it["residuals"], it["begin"] + 1)
                if r is None and i < N - 1]
    assert no_residual(settled[1]) == [] and no_residual(unsettled[1]) != []


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_paradigms_matches_the_diffusers_pipeline_loop(runs, model, sampler):
    x, strides = ref.paradigms(model, sampler, 50, 12, PD_TOL[sampler], 1, 2)
    got, report = runs[f"pd-{sampler}-3"]
    assert [i["stride"] for i in report["per_iteration"]] == strides
    assert np.allclose(got, x.numpy(), atol=1e-4)


@pytest.mark.parametrize("name", ["ps-ddim-2", "pd-ddpm-3", "ps0-dpmsolver-3", "psw-dpmsolver-3", "psw-ddpm-1"])
def test_report_columns(runs, name):
    _, report = runs[name]
    N = report["subintervals"]
    its = report["per_iteration"]
    assert report["iterations"] == len(its) and report["wall_s"] > 0
    assert sum(i["stride"] for i in its) == N
    begin, window = 0, its[0]["window"]
    for it in its:
        assert it["begin"] == begin and it["window"] == min(window, N - begin)
        assert 1 <= it["stride"] <= it["window"] and len(it["residuals"]) == it["window"]
        begin += it["stride"]
    # NFE: the preconditioning steps plus every window point's L sampler steps
    M = report["params"]["precondition"] if report["algorithm"] == "parasolver" else 0
    assert report["nfe"] == M + sum(i["nfe"] for i in its)


def test_stride_stops_at_the_first_point_over_tolerance(runs):
    _, report = runs["ps-ddim-2"]
    tol = report["params"]["tol"]
    for it in report["per_iteration"]:
        r = it["residuals"]
        s = it["stride"]
        assert all(v is not None and v <= tol for v in r[:s - 1])          # points begin+1 .. begin+s-1 converged
        if s < it["window"]:
            assert r[s - 1] is None or r[s - 1] > tol                       # begin+s did not


@pytest.mark.parametrize("args", [[*PS, "--sampler", "dpmsolver", "--tol", 0.05], [*PD, "--sampler", "ddpm", "--tol", 0.1]])
def test_the_stopping_rule_reads_the_device_once_per_iteration(tmp_path, monkeypatch, args):
    """Line 7 needs one host sync per iteration (the decision), not one per point: on a GPU a
    read per point left the GPU idle while the host issued a small model's next iteration."""
    from pardiff.algorithms.window import Window
    from pardiff.cli import main
    reads, inside = [], []

    def counted(name):
        original = getattr(torch.Tensor, name)

        def read(self, *a, **kw):
            if inside and self.is_floating_point():      # not the all-reduce's integer (a CPU tensor)
                reads[-1] += 1
            return original(self, *a, **kw)
        monkeypatch.setattr(torch.Tensor, name, read)
    for name in ("tolist", "item", "__float__", "__bool__", "numpy"):
        counted(name)
    rule = Window.first_unconverged

    def first_unconverged(self, *a, **kw):
        reads.append(0)
        inside.append(True)
        try:
            return rule(self, *a, **kw)
        finally:
            inside.pop()
    monkeypatch.setattr(Window, "first_unconverged", first_unconverged)
    monkeypatch.chdir(tmp_path)
    argv = ["simulate", *map(str, args[1:]), "--ranks", "1", *map(str, COMMON), "--report", "r.json"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert len(reads) == report["iterations"] > 1
    assert reads == [1] * len(reads)       # the changes, in one transfer


def test_trace_of_the_window(runs):
    trace = load_trace(str(runs["dir"] / "ps.h5"))
    report = runs["ps-trace"][1]
    assert trace.world_size == 2
    iters = report["iterations"]
    labels = {(r, k, l, line) for r, ev in trace.events.items()
              for k, l, line in zip(ev["kind"], ev["label"], ev["line"])}
    assert (0, "send", "drift", "PS-A1:6/Eq.13") in labels and (1, "recv", "drift", "PS-A1:6/Eq.13") in labels
    for r, ev in trace.events.items():
        coll = ev[ev["kind"] == "collective"]
        assert list(coll["label"]) == ["residual"] * iters and set(coll["line"]) == {"PS-A1:7/Eq.14"}
    evals = np.concatenate([ev[(ev["kind"] == "compute") & (ev["label"] == "eps")] for ev in trace.events.values()])
    assert evals["batch"].sum() == report["nfe"] * 2          # points x --batch 2
    assert set(evals["line"]) == {"PS-A1:1/Eq.17", "PS-A1:4"}
    assert (evals["t"] >= evals["t_min"]).all() and evals["t"].max() <= 999
    for send, recv in trace.messages():
        assert send["nbytes"] == recv["nbytes"] == 2 * 3 * 32 * 32 * 4


BAD = [
    (["parasolver", "--steps", 50, "--subintervals", 7], "--subintervals"),
    (["parasolver", "--steps", 50, "--subintervals", 60], "--subintervals"),
    (["parasolver", "--precondition", 11, "--window", 10], "--precondition"),
    (["parasolver", "--precondition", -1], "--precondition"),
    (["paradigms", "--tol", -0.1], "--tol"),
    (["paradigms", "--window", 0], "--window"),
    (["parasolver", "--clean-estimate", "middle"], "--clean-estimate"),
    (["parasolver", "--last-variance", "zero"], "--last-variance"),
    (["paradigms", "--last-variance", "authors"], "--last-variance"),
    (["parasolver", "--sampler", "ddim", "--missing-history", "settled"], "--missing-history"),
    (["se2p", "--missing-history", "settled"], "--missing-history"),
]


@pytest.mark.parametrize("args,flag", BAD, ids=[" ".join(map(str, a)) for a, _ in BAD])
def test_bad_window_flags(tmp_path, args, flag):
    result = pardiff(2, "run", *args, cwd=tmp_path, check=False, timeout=60)
    assert result.returncode == 2 and flag in result.stderr and "Traceback" not in result.stderr


def test_issue_command_lines(tmp_path):
    pardiff(1, "run", "sequential", "--sampler", "ddim", "--model", "gmm", "--steps", 50, "--seed", 1,
            "--batch", 2, "--out", "seq.npy", cwd=tmp_path)
    pardiff(2, "run", "parasolver", "--sampler", "ddim", "--model", "gmm", "--steps", 50, "--subintervals", 10,
            "--precondition", 2, "--window", 10, "--tol", 0.05, "--seed", 1, "--batch", 2, "--out", "ps.npy",
            "--report", "ps.json", "--trace", "ps.h5", cwd=tmp_path)
    pardiff(2, "run", "paradigms", "--sampler", "ddim", "--model", "gmm", "--steps", 50, "--window", 50,
            "--tol", 0.05, "--seed", 1, "--batch", 2, "--out", "pd.npy", "--report", "pd.json", cwd=tmp_path)
    seq = np.load(tmp_path / "seq.npy")
    assert np.abs(np.load(tmp_path / "ps.npy") - seq).max() < 0.02
    report = json.loads((tmp_path / "ps.json").read_text())
    assert {"iterations", "nfe", "wall_s", "per_iteration"} <= set(report)
    assert json.loads((tmp_path / "pd.json").read_text())["iterations"] < 50
