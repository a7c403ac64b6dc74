#!/usr/bin/env python3
"""ParaSolver and ParaDiGMS on a trained model: sample error and quality against the tolerance δ
(ParaSolver Table 6), iterations against N and M (Tables 3-4), on DDIM with 30 steps.

Every run is ``mpiexec -n --ranks pardiff run parasolver|paradigms --sampler ddim --steps 30`` from the
same --seed as the sequential DDIM-30 it parallelises (``pardiff run sequential``), so each parallel
sample has an exact target: the sequential sample from the same noise. Per run: iterations, NFE per
sample, model calls, the RMS and max distance of the samples to the sequential ones, and (one
``pardiff eval --reference lfw`` over every set) the image attributes, KID and paired attribute
differences against the sequential samples. DDIM-15 and DDIM-60 from the same noise give the scale of
an error that changes the sampler's quality (half and twice the steps).

Settings (the paper's LSUN-Church ones where they fit 30 steps):
- ``tol``:  ParaSolver N = 15, p = 15, M ∈ --precondition, δ ∈ --tols (Table 6: δ × M);
            ParaDiGMS p = 30, δ ∈ --tols (its grid search, §5.1);
- ``n``:    ParaSolver N ∈ {1, 5, 10, 15, 30}, M = min(10, N), p = N, δ = 0.005 (Table 4: M = 10, p = 30).

    OMP_NUM_THREADS=1 python3 launch/parallel_quality.py --out-dir traces/results/<date>_cpu_quality_sweeps/parallel
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_study import paired, pardiff  # noqa: E402

STEPS = 30


def settings(groups, tols, precondition, ns) -> list[dict]:
    out = []
    if "tol" in groups:
        for m in precondition:
            for tol in tols:
                out.append({"group": "tol", "tag": f"ps-N15-M{m}-tol{tol:g}", "algo": "parasolver",
                            "flags": ["--subintervals", 15, "--precondition", m, "--window", 15, "--tol", tol]})
        for tol in tols:
            out.append({"group": "tol", "tag": f"pd-p30-tol{tol:g}", "algo": "paradigms",
                        "flags": ["--window", 30, "--tol", tol]})
    if "n" in groups:
        for n in ns:
            m = min(10, n)
            out.append({"group": "n", "tag": f"ps-N{n}-M{m}-tol0.005", "algo": "parasolver",
                        "flags": ["--subintervals", n, "--precondition", m, "--window", n, "--tol", 0.005]})
    seen = set()
    return [r for r in out if not (r["tag"] in seen or seen.add(r["tag"]))]      # a tag in both groups runs once


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--groups", nargs="*", default=["tol", "n"])
    ap.add_argument("--tols", nargs="*", type=float, default=[0.1, 0.05, 0.01, 0.005, 0.001])
    ap.add_argument("--precondition", nargs="*", type=int, default=[2, 10])
    ap.add_argument("--ns", nargs="*", type=int, default=[1, 5, 10, 15, 30])
    ap.add_argument("--model", default="lfw-32")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    out_dir = Path(args.out_dir)
    samples_dir = out_dir / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    common = ["--model", args.model, "--seed", args.seed, "--batch", args.batch]
    t0 = time.time()
    wall = {}
    for tag, steps in (("ddim-30", STEPS), ("ddim-15", 15), ("ddim-60", 60)):
        if not (samples_dir / f"{tag}.npy").exists():
            wall[tag] = pardiff(1, "run", "sequential", "--sampler", "ddim", "--steps", steps, *common,
                                "--out", f"{tag}.npy", cwd=samples_dir)
    runs = settings(args.groups, args.tols, args.precondition, args.ns)
    reports = {}
    for r in runs:
        tag = r["tag"]
        if not (samples_dir / f"{tag}.npy").exists():
            wall[tag] = pardiff(args.ranks, "run", r["algo"], "--sampler", "ddim", "--steps", STEPS, *r["flags"],
                                *common, "--out", f"{tag}.npy", "--report", f"{tag}.json", cwd=samples_dir)
        rep = json.loads((samples_dir / f"{tag}.json").read_text())
        reports[tag] = {"iterations": rep["iterations"], "nfe": rep["nfe"],
                        "model_calls": [p["model_calls"] for p in rep["per_rank"]], "wall_s": rep["wall_s"]}
        print(f"{tag:24s} iterations {rep['iterations']:3d}  NFE {rep['nfe']:5d}  {wall.get(tag, 0):6.1f} s",
              flush=True)

    tags = ["ddim-30", "ddim-15", "ddim-60"] + [r["tag"] for r in runs]
    with tempfile.TemporaryDirectory() as tmp:
        pardiff(None, "eval", *[f"{t}.npy" for t in tags], "--reference", "lfw",
                "--report", str(Path(tmp) / "eval.json"), cwd=samples_dir)
        report = json.loads((Path(tmp) / "eval.json").read_text())
    metrics = {t: report["files"][f"{t}.npy"] for t in tags}
    samples = {t: np.load(samples_dir / f"{t}.npy") for t in tags}
    from pardiff.quality import LfwReference
    net = LfwReference().net
    seq = samples["ddim-30"]
    errors, diffs = {}, {}
    for t in tags[1:]:
        d = (samples[t].astype(np.float64) - seq).reshape(len(seq), -1)
        per = np.sqrt((d ** 2).mean(1))
        errors[t] = {"rms": float(np.sqrt((d ** 2).mean())), "rms_per_sample_se": float(per.std(ddof=1) /
                     math.sqrt(len(per))), "rms_per_sample_max": float(per.max()), "max_abs": float(np.abs(d).max())}
        diffs[t] = paired(samples[t], seq, net)

    meta = {"model": args.model, "batch": args.batch, "seed": args.seed, "ranks": args.ranks, "steps": STEPS,
            "sampler": "ddim", "device": f"cpu ({platform.machine()}, {os.cpu_count()} cores)",
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "date": time.strftime("%Y-%m-%d"),
            "torch": torch.__version__, "wall_s": time.time() - t0, "run_wall_s": wall,
            "settings": [{k: v for k, v in r.items()} for r in runs]}
    (out_dir / "results.json").write_text(json.dumps({"meta": meta, "runs": reports, "error_vs_sequential": errors,
                                                      "metrics": metrics, "paired_vs_sequential": diffs},
                                                     indent=1, default=str) + "\n")
    table = format_table(tags, reports, errors, metrics, diffs, args.batch)
    (out_dir / "table.md").write_text(table)
    print(table)
    return 0


def format_table(tags, reports, errors, metrics, diffs, batch) -> str:
    lines = [f"DDIM-{STEPS} on lfw-32, {batch} samples, same initial noises everywhere. Error = RMS distance to "
             "the sequential DDIM-30 sample from the same noise (max |Δ| beside it); Δ = paired difference to "
             "it, mean ± standard error; KID ± spread over random halves.", "",
             "| run | iterations | NFE / sample | RMS error (max) | Δ contrast | Δ sharpness | KID | NIQE-LFW (set) "
             "| face / non-face changed |", "|---|---|---|---|---|---|---|---|---|"]
    for t in tags:
        r = reports.get(t, {})
        seq_steps = int(t.split("-")[1]) if t.startswith("ddim-") else None      # sequential: one step an iteration
        it, nfe = r.get("iterations", seq_steps), r.get("nfe", seq_steps)
        if t == "ddim-30":
            err, dc, ds, ch = "0", "—", "—", "—"
        else:
            e, d = errors[t], diffs[t]
            err = f"{e['rms']:.2e} ({e['max_abs']:.1e})"
            dc = f"{d['contrast']['mean']:+.4f} ± {d['contrast']['se']:.4f}"
            ds = f"{d['sharpness']['mean']:+.5f} ± {d['sharpness']['se']:.5f}"
            ch = f"{d['class_changed']} of {batch}"
        m = metrics[t]
        lines.append(f"| {t} | {it} | {nfe} | {err} | {dc} | {ds} | {m['kid']:.3f} ± {m['kid_subset_std']:.3f} "
                     f"| {m['niqe_lfw']['mean']:.2f} ± {m['niqe_lfw']['se']:.2f} ({m['niqe_lfw']['set']:.2f}) | {ch} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
