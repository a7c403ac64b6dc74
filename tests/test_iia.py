"""IIA: samplers with fitted step sizes, fit-iia over 1-3 MPI ranks, the paper's claims on `gmm`."""
import json

import h5py
import numpy as np
import pytest
import torch

from conftest import pardiff
from pardiff.algorithms.iia_fit import accumulate, share, solve
from pardiff.iia.coeffs import Coefficients, schedule_fingerprint
from pardiff.models import load_model
from pardiff.solvers import SOLVERS as SAMPLER_CLASSES, make_solver
from pardiff.trace.reader import load_trace

MODEL = ["--model", "gmm:3x8x8"]
SAMPLE = [*MODEL, "--seed", 5, "--batch", 4]
FIT = ["fit-iia", *MODEL, "--fine", 3, "--batch", 6, "--seed", 0]
# fit-iia --solver -> (the sampler that uses the step sizes, its base sampler, extra flags, steps)
SOLVERS = {"ddim": ("iia-ddim", "ddim", [], 10),
           "ddim-cfg": ("iia-ddim-cfg", "ddim", ["--guidance", 2.0], 10),
           "dpmsolver++": ("iia-dpmsolver++", "dpmsolver", [], 10),
           "biia-edm": ("biia-edm", "edm", [], 6),
           "iia-edm": ("iia-edm", "edm", [], 6)}


def base_coefficients(solver: str, steps: int, history: int = 1, quantities: int = 2, guidance=None):
    """Step sizes that make the IIA sampler its base: zero, or EDM's own for the EDM family."""
    model = load_model("gmm:3x8x8")
    sampler = SOLVERS[solver][0]
    if sampler in ("biia-edm", "iia-edm"):
        edm = SAMPLER_CLASSES[sampler](model.schedule, steps, history=history)
        phi, grid = edm.default_step_sizes(), edm.grid
    else:
        columns = quantities if sampler == "iia-ddim" else 2 if sampler == "iia-dpmsolver++" else 1
        phi = np.zeros((steps, columns))
        grid = make_solver(SOLVERS[solver][1], model.schedule, steps).grid
    return Coefficients(solver=solver, coefficients=phi, grid=np.asarray(grid, dtype=np.float64),
                        model="gmm:3x8x8", sample_shape=(3, 8, 8), schedule=schedule_fingerprint(model.schedule),
                        fine=3, history=history if sampler.endswith("edm") else 0, batch=6, guidance=guidance)


# --- the samplers --------------------------------------------------------------------------

@pytest.mark.parametrize("solver,history,quantities", [("ddim", 1, 2), ("ddim", 1, 1), ("ddim-cfg", 1, 1),
                                                        ("dpmsolver++", 1, 2), ("biia-edm", 1, 2),
                                                        ("biia-edm", 0, 2), ("iia-edm", 1, 2), ("iia-edm", 2, 2)])
def test_base_step_sizes_reproduce_the_base_sampler(tmp_path, solver, history, quantities):
    sampler, base, extra, steps = SOLVERS[solver]
    guidance = 2.0 if solver == "ddim-cfg" else None
    base_coefficients(solver, steps, history, quantities, guidance).save(tmp_path / "c.h5")
    flags = [*SAMPLE, "--steps", steps, *extra, *(["--class-label", 1] if extra else [])]
    pardiff(1, "run", "sequential", "--sampler", base, *flags, "--out", "base.npy", cwd=tmp_path)
    pardiff(1, "run", "sequential", "--sampler", sampler, "--coeffs", "c.h5", *flags, "--out", "iia.npy",
            cwd=tmp_path)
    got, want = np.load(tmp_path / "iia.npy"), np.load(tmp_path / "base.npy")
    if sampler == "iia-edm":        # Lemma 1 regroups EDM's update: equal up to rounding
        assert np.allclose(got, want, atol=1e-5), np.abs(got - want).max()
    else:
        assert np.array_equal(got, want)


def _reference_iia(sampler, phi, steps, history=1, batch=4, seed=5):
    """The IIA samplers' updates written out from the paper (IIA-DDIM Eq. 6, IIA-DPM-Solver++
    Eq. 23, BIIA-EDM Eq. 13, IIA-EDM Eq. 18), one step at a time on the model's ε, for any step
    sizes: the base samplers' steps come from pardiff (tested against diffusers and EDM's
    convergence above), the combination with the earlier steps' quantities from here."""
    from pardiff import seeds
    from pardiff.solvers.edm import karras_sigmas
    model = load_model("gmm:3x8x8")
    z = seeds.gaussian((batch, 3, 8, 8), seeds.seed_for(seed, seeds.INIT)).double()
    eps_of = lambda x, t: model.eps(x.float(), torch.full((batch,), t, dtype=torch.float64)).double()  # noqa: E731
    if sampler in ("biia-edm", "iia-edm"):
        sig = karras_sigmas(model.schedule, steps)
        y, past = sig[0] * z, []                                  # past: quantities of steps i, i-1, ...
        for i in range(steps):
            s, s1 = sig[i], sig[i + 1]
            D = y - s * eps_of((1 + s * s) ** -0.5 * y, model.schedule.t_of_sigma(s))
            y_euler = y + (s1 - s) * (y - D) / s
            if s1 == 0:
                return y_euler
            D1 = y_euler - s1 * eps_of((1 + s1 * s1) ** -0.5 * y_euler, model.schedule.t_of_sigma(s1))
            if sampler == "biia-edm":       # y_{i+1} = y_i + h_i Σ_k γ_ik (½ d_{i-k} + ½ d'_{i-k})
                past = [[0.5 * (y - D) / s + 0.5 * (y_euler - D1) / s1]] + past[:history]
                y = y + sum(phi[i, k] * (s1 - s) * q[0] for k, q in enumerate(past))
            else:                           # y_{i+1} = y_i + Σ_k β^ε_ik (y - D)_{i-k} + β^D_ik (D - D')_{i-k}
                past = [[y - D, D - D1]] + past[:history]
                y = y + sum(phi[i, 2 * k] * q[0] + phi[i, 2 * k + 1] * q[1] for k, q in enumerate(past))
        return y
    base = make_solver({"iia-ddim": "ddim", "iia-dpmsolver++": "dpmsolver"}[sampler], model.schedule, steps)
    hist = previous = None
    for i, t in enumerate(base.timesteps):
        eps = eps_of(z, t)
        x0 = base.predict_x0(z, eps, i)
        z_next, hist = base.step(z, eps, i, hist)
        if sampler == "iia-ddim" and previous is not None:     # + φ_i0 (x̂_i − x̂_{i−1}) + φ_i1 (ε_i − ε_{i−1})
            z_next = z_next + phi[i, 0] * (x0 - previous[0]) + phi[i, 1] * (eps - previous[1])
        elif sampler == "iia-dpmsolver++":                     # + φ_i0 z_i + φ_i1 x̂_i
            z_next = z_next + phi[i, 0] * z + phi[i, 1] * x0
        z, previous = z_next, (x0, eps)
    return z


@pytest.mark.parametrize("solver,history", [("ddim", 1), ("dpmsolver++", 1), ("biia-edm", 2), ("iia-edm", 2)])
def test_iia_samplers_follow_the_papers_updates_for_any_step_sizes(tmp_path, solver, history):
    """With step sizes that are neither zero nor the base's (every earlier-step term weighted),
    each IIA sampler is the update its equation writes. The base step sizes (above) leave the
    history terms at weight zero, so only this sees them."""
    sampler, _, _, steps = SOLVERS[solver]
    coeffs = base_coefficients(solver, steps, history)
    rng = np.random.default_rng(1)
    phi = coeffs.coefficients.copy()
    first = 0 if sampler.endswith("edm") else 1              # the grid samplers' first step has no quantities
    phi[first:] = phi[first:] * rng.uniform(0.8, 1.2, phi[first:].shape) + rng.uniform(-0.05, 0.05, phi[first:].shape)
    coeffs.coefficients = phi
    coeffs.save(tmp_path / "c.h5")
    pardiff(1, "run", "sequential", "--sampler", sampler, "--coeffs", "c.h5", *SAMPLE, "--steps", steps,
            "--out", "iia.npy", cwd=tmp_path)
    want = _reference_iia(sampler, phi, steps, history).float().numpy()
    got = np.load(tmp_path / "iia.npy")
    assert np.allclose(got, want, atol=2e-5), np.abs(got - want).max()
    default = _reference_iia(sampler, base_coefficients(solver, steps, history).coefficients, steps, history)
    assert not np.allclose(want, default.float().numpy(), atol=1e-3)    # the step sizes do matter


def test_edm_converges_to_the_probability_flow_solution(tmp_path):
    """EDM (Heun) on the VP model through Eq. 9 lands where 500 DDIM steps do, better with more steps."""
    flags = [*SAMPLE, "--batch", 8]
    pardiff(1, "run", "sequential", "--sampler", "ddim", "--steps", 500, *flags, "--out", "ref.npy", cwd=tmp_path)
    ref = np.load(tmp_path / "ref.npy")
    errors = []
    for steps in (5, 20):
        pardiff(1, "run", "sequential", "--sampler", "edm", "--steps", steps, *flags, "--out", f"e{steps}.npy",
                cwd=tmp_path)
        errors.append(np.sqrt(((np.load(tmp_path / f"e{steps}.npy") - ref) ** 2).mean()))
    assert errors[1] < errors[0] / 3 and errors[1] < 0.02, errors


# --- the least-squares core ------------------------------------------------------------------

def test_fit_recovers_known_step_sizes():
    """A synthetic case: target = Σ_q φ_q V_q + small noise, the data split in three parts."""
    g = torch.Generator().manual_seed(0)
    phi_true = np.array([0.7, -1.3, 0.25])
    V = torch.randn(3, 12, 50, generator=g, dtype=torch.float64)
    target = sum(float(p) * v for p, v in zip(phi_true, V)) + 1e-3 * torch.randn(12, 50, generator=g,
                                                                                   dtype=torch.float64)
    parts = [accumulate([v[part] for v in V], target[part]) for part in (slice(0, 5), slice(5, 9), slice(9, 12))]
    terms = np.concatenate(parts)
    assert terms.shape == (12, 3 * 3 + 3 + 1) and np.allclose(terms, accumulate(list(V), target))
    phi, base, fitted = solve(terms, 3, np.zeros(3))
    assert np.allclose(phi, phi_true, atol=1e-3)
    assert np.isclose(base, float((target ** 2).sum()))
    assert np.isclose(fitted, float(((target - sum(float(p) * v for p, v in zip(phi, V))) ** 2).sum()))
    assert fitted < 1e-4 * base


def test_a_quantity_that_is_always_zero_gets_step_size_zero():
    V = [torch.randn(4, 10, dtype=torch.float64), torch.zeros(4, 10, dtype=torch.float64)]
    phi, _, _ = solve(accumulate(V, 2 * V[0]), 2, np.zeros(2))
    assert np.allclose(phi, [2, 0])


def test_a_direction_the_data_do_not_determine_keeps_the_default():
    """Two quantities equal but for 1e-5 noise (IIA-DDIM's at its first step are collinear): G's
    second eigenvalue is ~1e-10 of the first, below RCOND, so the noise in the target does not
    pick φ along (1, -1); the fit moves from the default only along what the data determine."""
    g = torch.Generator().manual_seed(1)
    v = torch.randn(6, 40, generator=g, dtype=torch.float64)
    V = [v, v + 1e-5 * torch.randn(6, 40, generator=g, dtype=torch.float64)]
    target = 2 * v + 1e-4 * torch.randn(6, 40, generator=g, dtype=torch.float64)
    exact = np.linalg.solve(*(lambda t: (t[:4].reshape(2, 2), t[4:6]))(accumulate(V, target).sum(0)))
    assert abs(exact[0] - exact[1]) > 1                                  # what the noise made of it
    for default in (np.zeros(2), np.array([0.5, -0.5])):
        phi, base, fitted = solve(accumulate(V, target), 2, default)
        assert np.isclose(phi.sum(), 2, atol=1e-3)                       # the determined direction
        assert np.isclose(phi[0] - phi[1], default[0] - default[1], atol=1e-3)
        assert fitted < 1e-4 * base


def test_samples_are_split_contiguously_over_the_ranks():
    for batch, size in ((8, 2), (7, 3), (3, 3)):
        parts = [share(batch, r, size) for r in range(size)]
        assert [b for p in parts for b in p] == list(range(batch))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


# --- fit-iia over MPI ranks ------------------------------------------------------------------

@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    d = tmp_path_factory.mktemp("iia")
    out = {"dir": d}
    for solver, (_, _, extra, steps) in SOLVERS.items():
        for n in ((1, 2, 3) if solver == "ddim" else (1, 2)):
            name = f"{solver}-{n}"
            trace = ["--trace", f"{name}-trace.h5"] if (solver, n) == ("ddim", 2) else []
            pardiff(n, *FIT, "--solver", solver, "--steps", steps, *extra, *trace, "--out", f"{name}.h5",
                    "--report", f"{name}.json", cwd=d)
            out[name] = (Coefficients.load(str(d / f"{name}.h5")), json.loads((d / f"{name}.json").read_text()))
    return out


@pytest.mark.parametrize("solver", SOLVERS)
def test_fits_do_not_depend_on_the_number_of_ranks(fits, solver):
    one = fits[f"{solver}-1"][0]
    for n in ((2, 3) if solver == "ddim" else (2,)):
        other = fits[f"{solver}-{n}"][0]
        # the per-sample terms are summed in sample order whatever the split: bit for bit equal
        assert np.array_equal(other.coefficients, one.coefficients), (n, np.abs(other.coefficients - one.coefficients).max())
        assert np.array_equal(other.residual_fitted, one.residual_fitted, equal_nan=True)


@pytest.mark.parametrize("solver", SOLVERS)
def test_fitted_step_sizes_lower_the_residual(fits, solver):
    coeffs, report = fits[f"{solver}-2"]
    steps = SOLVERS[solver][3]
    fitted = [p for p in report["per_step"] if p["fitted"]]
    expected = range(0 if solver == "ddim-cfg" else 1, steps - (2 if solver.endswith("edm") else 1) + 1)
    assert [p["step"] for p in fitted] == list(expected)
    for p in fitted:
        assert p["residual_fitted"] <= p["residual_base"] * (1 + 1e-9), p
    assert report["residual_fitted"] < 0.5 * report["residual_base"]
    assert report["B"] == 6 and report["fine"] == 3 and len(report["coefficients"]) == steps


def test_the_normal_equations_cross_ranks_as_traced_collectives(fits):
    trace = load_trace(str(fits["dir"] / "ddim-2-trace.h5"))
    for r in (0, 1):
        ev = trace.events[r]
        gram = ev[(ev["kind"] == "collective") & (ev["label"] == "gram")]
        assert list(gram["step"]) == list(range(1, 10))            # one sum per fitted step
        assert set(gram["line"]) == {"IIA-Eq.7:sum"}
        assert (gram["nbytes"] == 6 * 8 * (4 + 2 + 1)).all()      # per sample: G (2x2), h (2), c
        evals = ev[ev["label"] == "eps"]
        assert len(evals) == 10 + 9 * 2                             # coarse + (M-1) fine per fitted step


def test_coefficients_file_records_what_they_belong_to(fits):
    with h5py.File(fits["dir"] / "ddim-2.h5", "r") as f:
        meta = json.loads(f.attrs["meta"])
        assert f["coefficients"].shape == (10, 2) and f["grid"].shape == (10,)
    assert meta["model"] == "gmm:3x8x8" and meta["fine"] == 3 and meta["batch"] == 6 and meta["solver"] == "ddim"


# --- using the step sizes ----------------------------------------------------------------------

def test_coefficients_are_refused_for_another_model_grid_or_sampler(fits):
    d = fits["dir"]
    cases = [(["--sampler", "iia-ddim", "--steps", 20, *MODEL], "refit them for this run's grid"),
             (["--sampler", "iia-ddim", "--steps", 10, "--model", "gmm:3x8x4"], "not for --model"),
             (["--sampler", "iia-dpmsolver++", "--steps", 10, *MODEL], "not --sampler iia-dpmsolver++")]
    for flags, message in cases:
        r = pardiff(1, "run", "sequential", *flags, "--coeffs", "ddim-1.h5", "--seed", 1, "--batch", 2,
                    cwd=d, check=False)
        assert r.returncode == 2 and "--coeffs" in r.stderr and message in r.stderr, r.stderr
    r = pardiff(1, "run", "sequential", "--sampler", "iia-ddim-cfg", "--coeffs", "ddim-cfg-1.h5", *SAMPLE,
                "--steps", 10, "--guidance", 3, "--class-label", 0, cwd=d, check=False)
    assert r.returncode == 2 and "--guidance" in r.stderr
    # step sizes fitted on the guided ε refused for the unguided one, whatever the sampler
    base_coefficients("ddim", 10, guidance=3.0).save(d / "ddim-guided.h5")
    r = pardiff(1, "run", "sequential", "--sampler", "iia-ddim", "--coeffs", "ddim-guided.h5", *SAMPLE,
                "--steps", 10, cwd=d, check=False)
    assert r.returncode == 2 and "--guidance" in r.stderr and "fitted with guidance 3.0" in r.stderr, r.stderr


@pytest.mark.parametrize("algorithm", ["parasolver", "paradigms"])
def test_iia_ddim_serves_as_the_local_solver_of_the_parallel_methods(fits, algorithm):
    d = fits["dir"]
    flags = ["--sampler", "iia-ddim", "--coeffs", "ddim-1.h5", *SAMPLE, "--steps", 10]
    pardiff(1, "run", "sequential", *flags, "--out", "seq.npy", cwd=d)
    extra = ["--subintervals", 5, "--precondition", 1] if algorithm == "parasolver" else []
    pardiff(2, "run", algorithm, *flags, *extra, "--window", 4, "--tol", 0, "--out", "par.npy", cwd=d)
    assert np.allclose(np.load(d / "par.npy"), np.load(d / "seq.npy"), atol=1e-5)


def test_issue_command_lines(tmp_path):
    pardiff(2, "fit-iia", "--solver", "ddim", "--model", "gmm", "--steps", 10, "--fine", 4, "--batch", 8,
            "--seed", 0, "--out", "c.h5", "--report", "r.json", cwd=tmp_path)
    pardiff(1, "run", "sequential", "--sampler", "iia-ddim", "--coeffs", "c.h5", "--model", "gmm", "--steps", 10,
            "--seed", 5, "--batch", 4, "--out", "iia.npy", cwd=tmp_path)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["residual_fitted"] < report["residual_base"]
    assert np.load(tmp_path / "iia.npy").shape == (4, 3, 32, 32)


def test_iia_ddim_lands_closer_to_the_500_step_reference(tmp_path):
    """The paper's claim (Table 1) on `gmm`: IIA-DDIM-10 beats DDIM-10, with both readings of the quantities."""
    flags = ["--model", "gmm", "--seed", 5, "--batch", 16]
    pardiff(1, "run", "sequential", "--sampler", "ddim", "--steps", 500, *flags, "--out", "ref.npy", cwd=tmp_path)
    pardiff(1, "run", "sequential", "--sampler", "ddim", "--steps", 10, *flags, "--out", "ddim.npy", cwd=tmp_path)
    ref = np.load(tmp_path / "ref.npy")
    err = lambda f: np.sqrt(((np.load(tmp_path / f) - ref) ** 2).mean())   # noqa: E731
    for q in (1, 2):
        pardiff(2, "fit-iia", "--solver", "ddim", "--quantities", q, "--model", "gmm", "--steps", 10, "--fine", 4,
                "--batch", 64, "--seed", 0, "--out", f"c{q}.h5", cwd=tmp_path)
        pardiff(1, "run", "sequential", "--sampler", "iia-ddim", "--coeffs", f"c{q}.h5", "--steps", 10, *flags,
                "--out", f"iia{q}.npy", cwd=tmp_path)
        assert err(f"iia{q}.npy") < 0.8 * err("ddim.npy"), (q, err(f"iia{q}.npy"), err("ddim.npy"))


def test_fit_on_the_base_trajectory(fits):
    """--trajectory base: the same first fitted step (z_1 is DDIM's either way), later steps differ."""
    d = fits["dir"]
    pardiff(2, *FIT, "--solver", "ddim", "--steps", 10, "--trajectory", "base", "--out", "base.h5", cwd=d)
    base, iia = Coefficients.load(str(d / "base.h5")), fits["ddim-1"][0]
    assert np.array_equal(base.coefficients[:2], iia.coefficients[:2])
    assert not np.allclose(base.coefficients[2:], iia.coefficients[2:])
    fitted = ~np.isnan(base.residual_base)
    assert (base.residual_fitted[fitted] <= base.residual_base[fitted]).all()
