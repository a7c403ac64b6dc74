#!/usr/bin/env python3
"""SE2P's quality claims on a trained model: SE2P vs the sequential DDPM baseline vs the naive ablation.

For each N in --steps: the baseline (``pardiff run sequential --sampler ddpm`` on 1 rank), the
§4.5 ablation (``se2p --integration naive`` on 2 ranks) and SE2P (``se2p`` on 2 ranks) for each ρ
in --rho, all from the same --seed (so the same initial noises), --batch samples each. Then
``pardiff eval --reference lfw`` on every set and on --batch training images. Writes to --out-dir
results.json (the eval report; per-image paired differences against the baseline, the RMS pixel
distance to it and the face / non-face decisions that changed; the runs' wall times), table.md, and one grid PNG per N (rows: settings; columns: the first samples, same noise).

    python3 launch/quality_study.py --out-dir traces/results/<date>_cpu_quality --img-dir docs/img
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner import pardiff, stop_children_on_sigterm  # noqa: E402

GAMMA = 0.015


def sampling_device() -> str:
    """Where ``pardiff run`` (``--device auto``) put the runs: the GPU if torch sees one, else this CPU."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (pardiff run --device auto; ranks share GPU 0)"
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"


def sampling_log(samples_dir: Path, flags: dict, error) -> dict:
    """How the sample sets in ``samples_dir`` were made (``samples_dir/sampled.json``): the ``flags`` they
    all share and one entry per sampling call (machine, versions, date, what it ran), so that an
    evaluation in a later call, perhaps on another machine, says where its samples came from. Flags
    that differ from those already recorded are refused through ``error`` (a parser's)."""
    path = samples_dir / "sampled.json"
    log = json.loads(path.read_text()) if path.exists() else {"calls": []}
    differ = [k for k in flags if k in log and log[k] != flags[k]]
    if differ:
        error(f"{samples_dir} holds samples of " + ", ".join(f"--{k} {log[k]}" for k in differ)
              + ": give the same, or another --out-dir")
    return log


def log_sampling_call(samples_dir: Path, log: dict, flags: dict, **what) -> None:
    """Add this call to ``sampling_log``'s record (before its runs: a time limit keeps what ran)."""
    log.update(flags)
    log["calls"].append({"device": sampling_device(), "torch": torch.__version__, "python": platform.python_version(),
                         "date": time.strftime("%Y-%m-%d %H:%M"), **what})
    (samples_dir / "sampled.json").write_text(json.dumps(log, indent=1) + "\n")


def decoder_of(model: str):
    """The model itself when it is a latent model (its samples are latents to decode), else None."""
    from pardiff.models import load_model
    m = load_model(model)
    return m if getattr(m, "vae", None) is not None else None


def settings(steps: list[int], rhos: list[float]) -> list[tuple[str, int, int, list]]:
    """(tag, N, ranks, run arguments) of every sampling run."""
    out = []
    for n in steps:
        out.append((f"ddpm-{n}-B", n, 1, ["sequential", "--sampler", "ddpm"]))
        out.append((f"ddpm-{n}-Abl", n, 2, ["se2p", "--integration", "naive", "--gamma", GAMMA]))
        for rho in rhos:
            out.append((f"ddpm-{n}-{rho:.2f}", n, 2, ["se2p", "--gamma", GAMMA, "--rho", rho]))
    return out


def evaluate_sets(tags: list[str], cwd: Path, reference: str) -> tuple[dict, dict, dict]:
    """``pardiff eval`` over ``cwd``/TAG.npy of every tag against ``reference``: the report's metrics per tag,
    its feature-net description, and each set's per-image values (``--per-image``) for ``paired``."""
    from pardiff.quality import read_per_image
    with tempfile.TemporaryDirectory() as tmp:
        pardiff(None, "eval", *[f"{t}.npy" for t in tags], "--reference", reference,
                "--report", f"{tmp}/eval.json", "--per-image", f"{tmp}/per_image.npz", cwd=cwd)
        report = json.loads(Path(f"{tmp}/eval.json").read_text())
        per_image = read_per_image(f"{tmp}/per_image.npz")
    return ({t: report["files"][f"{t}.npy"] for t in tags}, report.get("feature_net"),
            {t: per_image[f"{t}.npy"] for t in tags})


def paired(x: np.ndarray, base: np.ndarray, values: dict, base_values: dict) -> dict:
    """Against the baseline sample from the same initial noise: per-image attribute (and NIQE) differences
    (mean ± SE), the RMS pixel distance, and how many samples the feature net (face / non-face, the digit,
    the photo) calls otherwise. ``values``, ``base_values``: each set's per-image values (evaluate_sets)."""
    from pardiff.quality import ATTRIBUTES
    out = {}
    for name in [*ATTRIBUTES, *(k for k in values if k.startswith("niqe_"))]:
        d = values[name] - base_values[name]
        out[name] = {"mean": float(d.mean()), "se": float(d.std(ddof=1) / math.sqrt(len(d)))}
    x, base = torch.from_numpy(x), torch.from_numpy(base)
    rms = ((x.clamp(-1, 1) - base.clamp(-1, 1)) ** 2).flatten(1).mean(1).sqrt()
    out["rms_to_baseline"] = {"mean": float(rms.mean()), "median": float(rms.median())}
    if "class" in values:
        out["class_changed"] = int((values["class"] != base_values["class"]).sum())
    return out


def grid_png(path: Path, rows: list[np.ndarray], cols: int, scale: int = 2) -> None:
    """Rows of images (B, C, H, W) in [-1, 1] (C: 1 gray, 3 RGB), the first ``cols`` of each, upscaled ``scale``×."""
    from PIL import Image
    C, H, W = rows[0].shape[-3:]
    canvas = np.zeros((len(rows) * H, cols * W, C), dtype=np.float32)
    for r, x in enumerate(rows):
        for c in range(cols):
            canvas[r * H:(r + 1) * H, c * W:(c + 1) * W] = x[c].transpose(1, 2, 0)
    pixels = ((np.clip(canvas, -1, 1) + 1) * 127.5).round().astype(np.uint8)
    image = Image.fromarray(pixels[..., 0] if C == 1 else pixels)
    image.resize((cols * W * scale, len(rows) * H * scale), Image.NEAREST).save(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--img-dir", help="also write the grids here (docs/img)")
    ap.add_argument("--model", default="lfw-32")
    ap.add_argument("--steps", nargs="*", type=int, default=[10, 20])
    ap.add_argument("--rho", nargs="*", type=float, default=[1.35, 1.55])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--grid-cols", type=int, default=10)
    args = ap.parse_args(argv)
    stop_children_on_sigterm()         # a time limit's SIGTERM stops the running jobs too
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="quality-study-"))
    t0 = time.time()

    runs = settings(args.steps, args.rho)
    wall = {}
    for tag, n, ranks, run_args in runs:
        wall[tag] = pardiff(ranks, "run", *run_args, "--model", args.model, "--steps", n, "--seed", args.seed,
                            "--batch", args.batch, "--out", f"{tag}.npy", cwd=work)
        print(f"{tag:16s} {wall[tag]:6.1f} s", flush=True)

    from pardiff.data import load_dataset
    data, _ = load_dataset("lfw", 32)
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:args.batch]
    np.save(work / "data.npy", data[pick].numpy())
    tags = [r[0] for r in runs] + ["data"]
    metrics, feature_net, per_image = evaluate_sets(tags, work, "lfw")

    samples = {t: np.load(work / f"{t}.npy") for t in tags}
    diffs = {tag: paired(samples[tag], samples[f"ddpm-{n}-B"], per_image[tag], per_image[f"ddpm-{n}-B"])
             for tag, n, _, _ in runs if not tag.endswith("-B")}

    img_dirs = [out_dir] + ([Path(args.img_dir)] if args.img_dir else [])
    for n in args.steps:
        rows = [samples[tag] for tag, m, _, _ in runs if m == n]
        for d in img_dirs:
            d.mkdir(parents=True, exist_ok=True)
            grid_png(d / f"quality_lfw32_ddpm{n}.png", rows, min(args.grid_cols, args.batch))

    meta = {"model": args.model, "batch": args.batch, "seed": args.seed, "gamma": GAMMA, "steps": args.steps,
            "rho": args.rho, "device": sampling_device(),
            "python": platform.python_version(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "wall_s": time.time() - t0, "run_wall_s": wall, "feature_net": feature_net,
            "data_row": f"{args.batch} of the 200 training images (seed 0); its KID and nearest-image distance "
                        "compare a subset with a set that contains it"}
    (out_dir / "results.json").write_text(json.dumps({"meta": meta, "metrics": metrics, "paired_vs_baseline": diffs},
                                                     indent=1) + "\n")
    table = format_tables(tags, metrics, diffs, feature_net["held_out_accuracy"], args.batch)
    (out_dir / "table.md").write_text(table)
    print(table)
    shutil.rmtree(work)
    return 0


def format_tables(tags, metrics, diffs, accuracy, batch) -> str:
    attrs = ("brightness", "contrast", "sharpness", "saturated")
    lines = [f"Means over {batch} samples per setting (± standard error); KID ± its spread over random halves. "
             f"Feature net held-out accuracy {accuracy:.3f}.", "",
             "| setting | brightness | contrast | sharpness | saturated | KID | face rate | nearest train RMS |",
             "|---|---|---|---|---|---|---|---|"]
    for t in tags:
        m = metrics[t]
        cells = [f"{m[a]['mean']:.4f} ± {m[a]['se']:.4f}" for a in attrs]
        lines.append(f"| {t} | " + " | ".join(cells) + f" | {m['kid']:.3f} ± {m['kid_subset_std']:.3f} "
                     f"| {m['face_rate']:.2f} | {m['nearest_train_rms']:.3f} |")
    lines += ["", "Paired differences to the baseline of the same N (same initial noise), mean ± standard error:", "",
              "| setting | Δ brightness | Δ contrast | Δ sharpness | Δ saturated | RMS pixel distance (median) "
              "| face / non-face changed |", "|---|---|---|---|---|---|---|"]
    for t, d in diffs.items():
        lines.append(f"| {t} | " + " | ".join(f"{d[a]['mean']:+.4f} ± {d[a]['se']:.4f}" for a in attrs)
                     + f" | {d['rms_to_baseline']['mean']:.3f} ({d['rms_to_baseline']['median']:.3f}) "
                     f"| {d['class_changed']} of {batch} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
