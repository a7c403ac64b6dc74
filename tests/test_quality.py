"""pardiff.quality and pardiff eval: metrics on hand-made images with known values, KID, the CLI."""
import json
import math

import numpy as np
import pytest
import torch

from conftest import pardiff
from pardiff.quality import (EvalError, brightness, colourfulness, contrast, evaluate, image_attributes, kid,
                             kid_subset_std, load_samples, saturated, sharpness)


def checkerboard(n=6):
    """A 1×1×n×n board of 0 and 1 (pixel values)."""
    i = torch.arange(n)
    return ((i[:, None] + i[None, :]) % 2).double()[None, None]


def test_constant_image_has_no_contrast_or_sharpness():
    img = torch.full((1, 1, 8, 8), 0.3, dtype=torch.float64)
    assert brightness(img).item() == pytest.approx(0.3)
    assert contrast(img).item() == 0
    assert sharpness(img).item() == 0
    assert colourfulness(img).item() == 0


def test_checkerboard_by_hand():
    board = checkerboard()
    assert brightness(board).item() == pytest.approx(0.5)
    assert contrast(board).item() == pytest.approx(0.5)          # values 0 and 1, half each
    # Interior Laplacian: 4 neighbours of the other colour, 4(1 - c) - 4c = ±4; mean 0, variance 16.
    assert sharpness(board).item() == pytest.approx(16.0)


def test_sharpness_ignores_the_border():
    # a linear ramp has zero Laplacian everywhere inside: no edge appears at the image border
    ramp = torch.linspace(0, 1, 10, dtype=torch.float64).expand(10, 10)[None, None]
    assert sharpness(ramp).item() == pytest.approx(0, abs=1e-12)


def test_colourfulness_by_hand():
    red = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    red[:, 0] = 1
    # rg = 255, yb = 127.5, no spread: M = 0.3 √(255² + 127.5²)
    assert colourfulness(red).item() == pytest.approx(0.3 * math.hypot(255, 127.5))
    gray = torch.full((1, 3, 4, 4), 0.6, dtype=torch.float64)
    assert colourfulness(gray).item() == pytest.approx(0, abs=1e-9)
    # half red, half green pixels: rg = ±255 (σ = 255), yb = 127.5 (σ = 0); μ_rg = 0
    rg = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    rg[0, 0, 0] = 1
    rg[0, 1, 1] = 1
    assert colourfulness(rg).item() == pytest.approx(255 + 0.3 * 127.5)


def test_rgb_brightness_is_luma():
    img = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    img[:, 1] = 1                                                  # pure green
    assert brightness(img).item() == pytest.approx(0.587)


def test_attributes_of_raw_samples():
    x = torch.tensor([[[[-1.0, 1.0], [0.0, 0.5]]]]).repeat(1, 1, 2, 2)   # pixels 0, 1, 0.5, 0.75, tiled
    a = image_attributes(x)
    assert a["brightness"].item() == pytest.approx(0.5625)
    assert a["saturated"].item() == pytest.approx(0.5)
    assert saturated(torch.zeros(1, 1, 3, 3)).item() == 0


def test_kid():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 8, generator=g, dtype=torch.float64)
    b = torch.randn(400, 8, generator=g, dtype=torch.float64)
    shifted = torch.randn(400, 8, generator=g, dtype=torch.float64) + 1.0
    same = kid(a, b)
    assert abs(same) < 0.05                                        # unbiased: ≈ 0 for one distribution
    assert kid(a, shifted) > 10 * max(abs(same), 1e-3)
    # a set against itself: the within-set terms leave out i = j, the cross term keeps it, so the
    # estimate is (2/m)(mean off-diagonal k - mean diagonal k): slightly negative, → 0 as m grows
    k = (a @ a.T / 8 + 1) ** 3
    m = len(a)
    off = (k.sum() - k.diagonal().sum()) / (m * (m - 1))
    assert kid(a, a) == pytest.approx(float(2 / m * (off - k.diagonal().mean())))
    with pytest.raises(ValueError):
        kid(a[:1], b)


def test_kid_subset_std_is_the_spread_of_each_halfs_kid():
    """kid_subset_std reuses the full set's kernels; it equals KID computed afresh on each random half."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(90, 8, generator=g), torch.randn(70, 8, generator=g) + 0.3
    draws = torch.Generator().manual_seed(5)
    halves = [kid(x[torch.randperm(90, generator=draws)[:45]], y) for _ in range(20)]
    assert kid_subset_std(x, y, repeats=20, seed=5) == pytest.approx(float(np.std(halves)), rel=1e-9)


def test_evaluate_npy_and_lfw_reference(tmp_path):
    pytest.importorskip("skimage")
    from pardiff.data import load_dataset
    data, labels = load_dataset("lfw", 32)
    assert data.shape == (200, 1, 32, 32) and labels[:100].all() and not labels[100:].any()
    assert -1 <= data.min() and data.max() <= 1
    np.save(tmp_path / "faces.npy", data[:40].numpy())
    np.save(tmp_path / "noise.npy", torch.randn(40, 1, 32, 32, generator=torch.Generator().manual_seed(0)).numpy())
    report = evaluate([str(tmp_path / "faces.npy"), str(tmp_path / "noise.npy")], "lfw")
    faces, noise = report["files"][str(tmp_path / "faces.npy")], report["files"][str(tmp_path / "noise.npy")]
    assert report["feature_net"]["held_out_accuracy"] > 0.8
    assert faces["face_rate"] > 0.8
    assert faces["nearest_train_rms"] < 1e-6                       # they are training images
    assert faces["kid"] < noise["kid"]
    assert faces["colourfulness"]["mean"] == 0


def test_evaluate_lfw_faces_reference(tmp_path):
    """--reference lfw-faces: the same classifier, the 100 faces as the reference set: the faces'
    KID falls against it and the non-faces' rises, and non-faces are no training faces."""
    pytest.importorskip("skimage")
    from pardiff.data import load_dataset
    data, _ = load_dataset("lfw", 32)
    paths = [str(tmp_path / f) for f in ("faces.npy", "other.npy")]
    np.save(paths[0], data[:50].numpy())
    np.save(paths[1], data[100:150].numpy())
    both, faces_only = evaluate(paths, "lfw"), evaluate(paths, "lfw-faces")
    assert faces_only["feature_net"]["reference_images"] == 100 and both["feature_net"]["reference_images"] == 200
    assert faces_only["feature_net"]["held_out_accuracy"] == both["feature_net"]["held_out_accuracy"]
    f, o = (faces_only["files"][p] for p in paths)
    assert f["kid"] < both["files"][paths[0]]["kid"] and o["kid"] > both["files"][paths[1]]["kid"]
    assert f["nearest_train_rms"] < 1e-6 < o["nearest_train_rms"]
    assert f["face_rate"] == both["files"][paths[0]]["face_rate"]


def test_evaluate_digits_reference(tmp_path):
    """--reference digits:D: a ten-digit classifier; training 3s are 3s, at distance 0 and nearer in
    KID to the 3s than 7s are; against all digits each set is counted per digit."""
    pytest.importorskip("sklearn")
    from pardiff.data import load_dataset
    data, labels = load_dataset("digits", 32)
    assert data.shape == (1797, 1, 32, 32) and labels.bincount().min() >= 170 and -1 <= data.min() < data.max() <= 1
    paths = [str(tmp_path / f) for f in ("threes.npy", "sevens.npy")]
    np.save(paths[0], data[labels == 3][:60].numpy())
    np.save(paths[1], data[labels == 7][:60].numpy())
    three, every = evaluate(paths, "digits:3"), evaluate(paths, "digits")
    assert three["feature_net"]["held_out_accuracy"] > 0.95 and three["feature_net"]["reference_images"] == 183
    t, s = (three["files"][p] for p in paths)
    assert t["class_rate"] > 0.9 and s["class_rate"] < 0.1
    assert t["nearest_train_rms"] < 1e-6 < s["nearest_train_rms"]
    assert t["kid"] + 3 * t["kid_subset_std"] < s["kid"]
    counts = every["files"][paths[1]]["class_counts"]
    assert len(counts) == 10 and sum(counts) == 60 and counts[7] > 54
    assert "class_rate" not in every["files"][paths[1]] and "niqe_lfw" not in t


def test_evaluate_photos_reference(tmp_path):
    """--reference photos:K: a ten-photograph classifier on RGB; photo 2's crops are photo 2's, at distance
    0, nearer in KID than photo 7's and in NIQE-photos than blurred crops (a 5x5 blur the KID of 64
    samples does not separate from the crops: its net sees colour and coarse texture), and colourful;
    a grayscale copy is not."""
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    from pardiff.data import load_dataset
    data, labels = load_dataset("photos", 32)
    crops = data[labels == 2][:64]
    gray = crops.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    blurred = torch.nn.functional.avg_pool2d(crops, 5, 1, 2, count_include_pad=False)
    paths = [str(tmp_path / f) for f in ("crops.npy", "gray.npy", "blurred.npy", "rocket.npy")]
    for path, x in zip(paths, (crops, gray, blurred, data[labels == 7][:64])):
        np.save(path, x.contiguous().numpy())
    per_image = {}
    report = evaluate(paths, "photos:2", per_image=per_image)
    assert report["feature_net"]["held_out_accuracy"] > 0.9 and report["feature_net"]["reference_images"] == 512
    c, g, b, r = (report["files"][p] for p in paths)
    assert c["class_rate"] > 0.9 and r["class_rate"] < 0.1
    assert c["nearest_train_rms"] < 1e-6 < b["nearest_train_rms"]
    assert c["kid"] + 3 * c["kid_subset_std"] < r["kid"]
    assert c["niqe_photos"]["mean"] < b["niqe_photos"]["mean"] and "niqe_lfw" not in c
    assert c["colourfulness"]["mean"] > 10 and g["colourfulness"]["mean"] < 1e-3
    assert c["brightness"]["mean"] == pytest.approx(g["brightness"]["mean"], abs=0.02)   # luma kept, roughly
    # --per-image: each image's values, whose means are the report's
    for path in paths:
        values, entry = per_image[path], report["files"][path]
        assert all(len(v) == 64 for v in values.values())
        for name in ("brightness", "contrast", "sharpness", "colourfulness", "saturated"):
            assert values[name].mean() == pytest.approx(entry[name]["mean"], rel=1e-12)
        assert values["niqe_photos"].mean() == pytest.approx(entry["niqe_photos"]["mean"], rel=1e-12)
        assert values["nearest_train_rms"].mean() == pytest.approx(entry["nearest_train_rms"], rel=1e-6)
        assert (values["class"] == 2).mean() == pytest.approx(entry["class_rate"])


def test_evaluate_gmm(tmp_path):
    from pardiff.models import load_model
    mixture = load_model("gmm:1x4x4")
    exact = mixture.sample(64, generator=torch.Generator().manual_seed(1))
    np.save(tmp_path / "exact.npy", exact.numpy())
    np.save(tmp_path / "far.npy", (exact + 0.5).numpy())
    report = evaluate([str(tmp_path / "exact.npy"), str(tmp_path / "far.npy")], "gmm:1x4x4")
    e, f = report["files"][str(tmp_path / "exact.npy")], report["files"][str(tmp_path / "far.npy")]
    assert abs(e["loglik_per_dim"] - e["loglik_per_dim_exact"]) < 4 * e["loglik_per_dim_se"] + 0.05
    assert f["loglik_per_dim"] < e["loglik_per_dim"] - 1


def test_load_samples_errors(tmp_path):
    with pytest.raises(EvalError, match="SAMPLES.*npy"):
        load_samples(str(tmp_path / "grid.png"))
    with pytest.raises(EvalError, match="does not exist"):
        load_samples(str(tmp_path / "missing.npy"))
    np.save(tmp_path / "flat.npy", np.zeros((4, 16), np.float32))
    with pytest.raises(EvalError, match="shape"):
        load_samples(str(tmp_path / "flat.npy"))


def test_eval_cli(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((3, 1, 8, 8), np.float32))
    r = pardiff(None, "eval", "a.npy", "--report", "r.json", cwd=tmp_path)
    assert "a.npy" in r.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["files"]["a.npy"]["contrast"]["mean"] == 0 and report["files"]["a.npy"]["n"] == 3


def test_eval_cli_per_image(tmp_path):
    """--per-image FILE.npz: an array per (file, metric); the attributes without a reference, plus the
    class, nearest-image distance and NIQE with one."""
    from pardiff.quality import read_per_image
    x = np.linspace(-1, 1, 4 * 8 * 8, dtype=np.float32).reshape(4, 1, 8, 8)
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", -x)
    pardiff(None, "eval", "a.npy", "b.npy", "--report", "r.json", "--per-image", "p.npz", cwd=tmp_path)
    values, report = read_per_image(str(tmp_path / "p.npz")), json.loads((tmp_path / "r.json").read_text())
    assert sorted(values) == ["a.npy", "b.npy"]
    assert sorted(values["a.npy"]) == sorted(["brightness", "contrast", "sharpness", "colourfulness", "saturated"])
    for f in ("a.npy", "b.npy"):
        assert values[f]["brightness"].shape == (4,)
        assert values[f]["brightness"].mean() == pytest.approx(report["files"][f]["brightness"]["mean"])
    np.testing.assert_allclose(values["a.npy"]["brightness"] + values["b.npy"]["brightness"], 1, atol=1e-6)


@pytest.mark.parametrize("args, message", [
    (["missing.npy"], "SAMPLES: 'missing.npy' does not exist"),
    (["a.npy", "--reference", "imagenet"], "--reference: none, lfw, lfw-faces, digits, digits:D, photos, photos:K, "
                                           "gmm or gmm:CxHxW"),
    (["a.npy", "--reference", "digits:12"], "--reference: digits:D takes one digit D in 0..9"),
    (["a.npy", "--reference", "photos:x"], "--reference: photos:K takes one photo K in 0..9"),
    (["a.npy", "--reference", "photos"], "--reference: the photo crops are RGB; 'a.npy' has 1 channels"),
    (["a.npy", "--reference", "lfw:1"], "--reference: none, lfw"),
    (["a.npy", "--reference", "gmm:0x4x4"], "--reference: gmm shape must be positive"),
    (["rgb.npy", "--reference", "lfw"], "--reference: the LFW images are grayscale"),
    (["rgb.npy", "--reference", "digits:4"], "--reference: the digit images are grayscale"),
    (["a.npy", "--reference", "gmm"], "--reference: gmm has shape (3, 32, 32)"),
    (["a.npy", "--report", "no/such/r.json"], "no/such' does not exist"),
    (["a.npy", "--report", "r.txt"], "--report: must end in .json"),
    (["a.npy", "--per-image", "p.json"], "--per-image: must end in .npz"),
    (["a.npy", "--per-image", "no/such/p.npz"], "no/such' does not exist"),
    (["ints.npy"], "SAMPLES: 'ints.npy' holds int64 values"),
    (["nan.npy"], "SAMPLES: 'nan.npy' holds NaN or inf values"),
])
def test_eval_cli_errors(tmp_path, args, message):
    np.save(tmp_path / "a.npy", np.zeros((3, 1, 8, 8), np.float32))
    np.save(tmp_path / "rgb.npy", np.zeros((3, 3, 8, 8), np.float32))
    np.save(tmp_path / "ints.npy", np.zeros((3, 1, 8, 8), np.int64))
    np.save(tmp_path / "nan.npy", np.full((3, 1, 8, 8), np.nan, np.float32))
    r = pardiff(None, "eval", *args, cwd=tmp_path, check=False)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------
# NIQE
# ---------------------------------------------------------------------------------------------

def test_gamma_ratio_known_values():
    from pardiff.quality import _gamma_ratio
    # α = 2 (Gaussian): (E|x|)² / E[x²] = 2/π; α = 1 (Laplace): Γ(2)² / (Γ(1) Γ(3)) = 1/2
    assert _gamma_ratio(np.array([2.0, 1.0])) == pytest.approx([2 / math.pi, 0.5], rel=1e-12)


@pytest.mark.parametrize("alpha", [0.6, 1.0, 2.0, 3.0])
def test_aggd_fit_recovers_a_symmetric_generalised_gaussian(alpha):
    from scipy.stats import gennorm
    from pardiff.quality import aggd_fit
    x = gennorm.rvs(alpha, scale=0.7, size=400_000, random_state=np.random.default_rng(1))
    a, bl, br = aggd_fit(x[None])
    assert a[0] == pytest.approx(alpha, rel=0.03)
    assert bl[0] == pytest.approx(0.7, rel=0.03) and br[0] == pytest.approx(0.7, rel=0.03)


def test_aggd_fit_recovers_the_two_sides():
    from pardiff.quality import aggd_fit
    # an AGGD with α = 2, β_l = √2, β_r = 2√2: half-Gaussians of σ 1 and 2, the left side with mass
    # β_l / (β_l + β_r) = 1/3 (the density is continuous at 0)
    rng = np.random.default_rng(2)
    z = np.abs(rng.standard_normal(600_000))
    x = np.where(np.arange(len(z)) % 3 == 0, -1.0 * z, 2.0 * z)
    a, bl, br = aggd_fit(x[None])
    assert a[0] == pytest.approx(2.0, rel=0.02)
    assert bl[0] == pytest.approx(math.sqrt(2), rel=0.01)            # β = σ√2 for α = 2
    assert br[0] == pytest.approx(2 * math.sqrt(2), rel=0.01)


def test_mscn_of_flat_and_affine_images():
    from pardiff.quality import mscn
    assert mscn(torch.full((1, 16, 16), 120.0, dtype=torch.float64)).abs().max().item() < 1e-9
    y = torch.rand(1, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 255
    # a brightness offset leaves (I − μ) and σ unchanged
    assert torch.allclose(mscn(y), mscn(y + 40), atol=1e-9)


def test_mscn_filters_with_the_two_dimensional_window():
    """mscn's two 1-D passes are the 7x7 window fspecial('gaussian', 7, 7/6) in one 2-D filter, written
    here from its definition: μ and σ from a direct sum over each pixel's replicated-border window."""
    from pardiff.quality import mscn
    r = torch.arange(7, dtype=torch.float64) - 3
    w = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * (7 / 6) ** 2))
    w = w / w.sum()
    y = torch.rand(2, 12, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 255
    padded = torch.nn.functional.pad(y[:, None], (3, 3, 3, 3), mode="replicate")[:, 0]
    windows = padded.unfold(1, 7, 1).unfold(2, 7, 1)                    # (B, H, W, 7, 7)
    mu = (windows * w).sum((-1, -2))
    sigma = ((windows ** 2 * w).sum((-1, -2)) - mu ** 2).abs().sqrt()
    torch.testing.assert_close(mscn(y), (y - mu) / (sigma + 1), rtol=0, atol=1e-10)


def test_niqe_shape_look_up_and_per_image_scores_as_written():
    """The binary search finds argmin's grid α (the lower one on a tie, at the grid's midpoints), and
    the per-image scores are niqe_distance of each row."""
    from pardiff.quality import NIQE_GAMMAS, _gamma_ratio, _shape_from_ratio, niqe_distance, niqe_scores
    table = _gamma_ratio(NIQE_GAMMAS)
    r = np.concatenate([np.random.default_rng(0).uniform(0, 0.8, 5000), table, (table[1:] + table[:-1]) / 2,
                        [0.0, 1.0]])
    brute = NIQE_GAMMAS[np.argmin((table[None, :] - r[:, None]) ** 2, axis=1)]
    np.testing.assert_array_equal(_shape_from_ratio(r), brute)
    g = np.random.default_rng(1)
    a = g.standard_normal((40, 5))
    model = (g.standard_normal(5), a.T @ a / 40)
    features = g.standard_normal((7, 5))
    per_image, _ = niqe_scores(model, features)
    np.testing.assert_allclose(per_image, [niqe_distance(model, f) for f in features], rtol=1e-10)


def test_niqe_distance_by_hand():
    from pardiff.quality import niqe_distance
    model = (np.zeros(2), np.diag([2.0, 8.0]))
    # ((Σ_p + 0) / 2)⁻¹ = diag(1, 1/4): 1·1 + 2²/4 = 2
    assert niqe_distance(model, np.array([1.0, 2.0])) == pytest.approx(math.sqrt(2))
    assert niqe_distance(model, np.array([1.0, 2.0]), np.diag([0.0, 8.0])) == pytest.approx(math.sqrt(1 + 4 / 8))


def test_niqe_grows_with_noise_and_blur_on_lfw():
    from pardiff.data import load_dataset
    from pardiff.quality import niqe_features, niqe_model, niqe_scores, to_unit
    x, _ = load_dataset("lfw", 32)
    f = niqe_features(to_unit(x))
    assert f.shape == (200, 36) and np.isfinite(f).all()
    model = niqe_model(f)
    assert niqe_scores(model, f)[1] == pytest.approx(0, abs=1e-9)     # the pristine set against itself
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=g)
    sets = [niqe_scores(model, niqe_features(to_unit(x + s * noise))) for s in (0.02, 0.05, 0.1)]
    per_image = [p.mean() for p, _ in sets]
    whole = [w for _, w in sets]
    assert per_image == sorted(per_image) and whole == sorted(whole) and whole[0] > 1
    blurred = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    assert niqe_scores(model, niqe_features(to_unit(blurred)))[1] > 1
