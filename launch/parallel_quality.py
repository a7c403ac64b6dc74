#!/usr/bin/env python3
"""ParaSolver and ParaDiGMS on a trained model: sample error and quality against the tolerance δ
(ParaSolver Table 6), iterations against N and M (Tables 3-4), on DDIM with 30 steps.

Every run is ``mpiexec -n --ranks pardiff run parasolver|paradigms --sampler ddim --steps 30`` from the
same seed as the sequential DDIM-30 it parallelises (``pardiff run sequential``), so each parallel
sample has an exact target: the sequential sample from the same noise. Per run: iterations, NFE per
sample, model calls, the RMS and max distance of the samples to the sequential ones, and (one
``pardiff eval --reference lfw`` over every set) the image attributes, KID and paired attribute
differences against the sequential samples. DDIM-15 and DDIM-60 from the same noise give the scale of
an error that changes the sampler's quality (half and twice the steps).

Settings (the paper's LSUN-Church ones where they fit 30 steps):
- ``tol``:  ParaSolver N = 15, p = 15, M ∈ --precondition, δ ∈ --tols (Table 6: δ × M);
            ParaDiGMS p = 30, δ ∈ --tols (its grid search, §5.1);
- ``n``:    ParaSolver N ∈ {1, 5, 10, 15, 30}, M = min(10, N), p = N, δ = 0.005 (Table 4: M = 10, p = 30).

With several --seeds every setting runs once per seed (--batch samples each, --jobs runs at once) and
is evaluated over all of them: the stopping rule waits for the slowest sample of a run's batch, so
more samples come from more runs of the same batch size, not from one larger batch.

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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_study import evaluate_sets, log_sampling_call, paired, sampling_log  # noqa: E402
from runner import pardiff, stop_children_on_sigterm  # noqa: E402

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


def sample_name(tag: str, seed: int, seeds: list[int]) -> str:
    """A run's sample file: ``TAG.npy`` for a single seed (as the first studies wrote them), else per seed."""
    return f"{tag}.npy" if len(seeds) == 1 else f"{tag}-seed{seed}.npy"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--groups", nargs="*", default=["tol", "n"])
    ap.add_argument("--tols", nargs="*", type=float, default=[0.1, 0.05, 0.01, 0.005, 0.001])
    ap.add_argument("--precondition", nargs="*", type=int, default=[2, 10])
    ap.add_argument("--ns", nargs="*", type=int, default=[1, 5, 10, 15, 30])
    ap.add_argument("--model", default="lfw-32")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16,
                    help="samples per run; the stopping rule waits for the slowest sample of a run's batch")
    ap.add_argument("--seeds", nargs="*", type=int, default=[1],
                    help="one run of every setting per seed, --batch samples each (default: 1)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (default 1; each is its own mpiexec)")
    ap.add_argument("--far", type=float, default=0.15,
                    help="a sample whose RMS distance to its sequential sample exceeds this ended on another image")
    ap.add_argument("--sample-only", action="store_true",
                    help="sample and stop; a later call with the same flags evaluates (e.g. on another machine)")
    args = ap.parse_args(argv)
    stop_children_on_sigterm()         # a time limit's SIGTERM stops the running jobs too
    if not args.seeds or args.jobs < 1 or args.batch < 2:
        ap.error("--seeds needs a value, --jobs at least 1, --batch at least 2 (standard errors)")
    out_dir = Path(args.out_dir)
    samples_dir = out_dir / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    seeds = args.seeds
    t0 = time.time()
    runs = settings(args.groups, args.tols, args.precondition, args.ns)
    todo = []           # (tag, seed, ranks, run arguments)
    for seed in seeds:
        common = ["--model", args.model, "--seed", seed, "--batch", args.batch]
        for tag, steps in (("ddim-30", STEPS), ("ddim-15", 15), ("ddim-60", 60)):
            todo.append((tag, seed, 1, ["run", "sequential", "--sampler", "ddim", "--steps", steps, *common]))
        for r in runs:
            todo.append((r["tag"], seed, args.ranks, ["run", r["algo"], "--sampler", "ddim", "--steps", STEPS,
                                                      *r["flags"], *common]))
    todo = [t for t in todo if not (samples_dir / sample_name(t[0], t[1], seeds)).exists()]
    flags = {"model": args.model, "batch": args.batch, "ranks": args.ranks}     # what every sample file shares
    sampled = sampling_log(samples_dir, flags, ap.error)
    if todo:
        log_sampling_call(samples_dir, sampled, flags, jobs=args.jobs, runs=[f"{t[0]} seed {t[1]}" for t in todo])

    def sample(job) -> tuple[str, int, float]:
        tag, seed, ranks, run_args = job
        name = sample_name(tag, seed, seeds)
        report = ["--report", name.replace(".npy", ".json")] if run_args[1] != "sequential" else []
        return tag, seed, pardiff(ranks, *run_args, "--out", name, *report, cwd=samples_dir)

    if args.jobs > 1:       # Open MPI binds rank 0 of every mpiexec to core 0: concurrent jobs would share one core
        os.environ.setdefault("OMPI_MCA_hwloc_base_binding_policy", "none")
    wall = {}
    with ThreadPoolExecutor(args.jobs) as pool:            # threads only wait on their mpiexec
        for tag, seed, w in pool.map(sample, todo):
            wall[f"{tag} seed {seed}"] = w
            print(f"{tag:24s} seed {seed:4d}  {w:6.1f} s", flush=True)
    if args.sample_only:
        print(f"sampled {len(todo)} runs in {time.time() - t0:.0f} s; evaluate with the same flags, "
              "without --sample-only")
        return 0

    reports = {}
    for r in runs:
        tag = r["tag"]
        reps = [json.loads((samples_dir / sample_name(tag, s, seeds).replace(".npy", ".json")).read_text())
                for s in seeds]
        reports[tag] = {"iterations": [rep["iterations"] for rep in reps], "nfe": [rep["nfe"] for rep in reps],
                        "model_calls": [[p["model_calls"] for p in rep["per_rank"]] for rep in reps],
                        "wall_s": [rep["wall_s"] for rep in reps]}

    tags = ["ddim-30", "ddim-15", "ddim-60"] + [r["tag"] for r in runs]
    samples = {t: np.concatenate([np.load(samples_dir / sample_name(t, s, seeds)) for s in seeds]) for t in tags}
    with tempfile.TemporaryDirectory() as tmp:
        for t in tags:                                      # every seed's samples of a setting as one set
            np.save(Path(tmp) / f"{t}.npy", samples[t])
        metrics, _, per_image = evaluate_sets(tags, Path(tmp), "lfw")
    seq = samples["ddim-30"]
    errors, diffs = {}, {}
    for t in tags[1:]:
        d = (samples[t].astype(np.float64) - seq).reshape(len(seq), -1)
        per = np.sqrt((d ** 2).mean(1))
        errors[t] = {"rms": float(np.sqrt((d ** 2).mean())), "rms_per_sample_se": float(per.std(ddof=1) /
                     math.sqrt(len(per))), "rms_per_sample_median": float(np.median(per)),
                     "rms_per_sample_max": float(per.max()), "far": int((per > args.far).sum()),
                     "max_abs": float(np.abs(d).max()), "rms_per_sample": [float(f"{v:.5g}") for v in per]}
        diffs[t] = paired(samples[t], seq, per_image[t], per_image["ddim-30"])

    meta = {"model": args.model, "batch": args.batch, "seeds": seeds, "samples": len(seq), "ranks": args.ranks,
            "steps": STEPS, "sampler": "ddim", "far": args.far, "sampled_on": sampled["calls"],
            "evaluated_on": f"cpu ({platform.machine()}, {os.cpu_count()} cores)",
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "date": time.strftime("%Y-%m-%d"),
            "torch": torch.__version__, "wall_s": time.time() - t0, "run_wall_s": wall,
            "settings": [{k: v for k, v in r.items()} for r in runs]}
    (out_dir / "results.json").write_text(json.dumps({"meta": meta, "runs": reports, "error_vs_sequential": errors,
                                                      "metrics": metrics, "paired_vs_sequential": diffs},
                                                     indent=1, default=str) + "\n")
    table = format_table(tags, reports, errors, metrics, diffs, meta)
    (out_dir / "table.md").write_text(table)
    print(table)
    return 0


def spread(values: list[int]) -> str:
    """One run's count, or the mean and range over the seeds' runs."""
    if len(set(values)) == 1:
        return str(values[0])
    return f"{np.mean(values):.1f} ({min(values)}–{max(values)})"


def format_table(tags, reports, errors, metrics, diffs, meta) -> str:
    n, seeds = meta["samples"], meta["seeds"]
    runs = f"one run of {meta['batch']}" if len(seeds) == 1 else f"{len(seeds)} runs of {meta['batch']} (seeds " \
        f"{seeds[0]}–{seeds[-1]}; iterations and NFE: mean (range) over the runs)"
    lines = [f"DDIM-{STEPS} on {meta['model']}, {n} samples ({runs}), same initial noises everywhere. Error = RMS "
             f"distance to the sequential DDIM-{STEPS} sample from the same noise (max |Δ| beside it); per sample: "
             f"median, largest, and how many exceed {meta['far']:g} (ended on another image); Δ = paired difference "
             "to it, mean ± standard error; KID ± spread over random halves.", "",
             "| run | iterations | NFE / sample | RMS error (max) | per sample: median, largest, far | Δ contrast "
             "| Δ sharpness | KID | NIQE-LFW (set) | face / non-face changed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for t in tags:
        r = reports.get(t, {})
        seq_steps = [int(t.split("-")[1])] if t.startswith("ddim-") else None      # sequential: one step an iteration
        it, nfe = spread(r.get("iterations", seq_steps)), spread(r.get("nfe", seq_steps))
        if t == "ddim-30":
            err, per, dc, ds, ch = "0", "—", "—", "—", "—"
        else:
            e, d = errors[t], diffs[t]
            err = f"{e['rms']:.2e} ({e['max_abs']:.1e})"
            per = f"{e['rms_per_sample_median']:.1e}, {e['rms_per_sample_max']:.3f}, {e['far']} of {n}"
            dc = f"{d['contrast']['mean']:+.4f} ± {d['contrast']['se']:.4f}"
            ds = f"{d['sharpness']['mean']:+.5f} ± {d['sharpness']['se']:.5f}"
            ch = f"{d['class_changed']} of {n}"
        m = metrics[t]
        lines.append(f"| {t} | {it} | {nfe} | {err} | {per} | {dc} | {ds} | {m['kid']:.3f} ± {m['kid_subset_std']:.3f} "
                     f"| {m['niqe_lfw']['mean']:.2f} ± {m['niqe_lfw']['se']:.2f} ({m['niqe_lfw']['set']:.2f}) | {ch} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
