#!/usr/bin/env python3
"""ParaSolver / ParaDiGMS on 1..G GPUs, predicted from a measured one-GPU run's strides.

The window's strides (hence iterations, batches and messages) do not depend on the number of
ranks (tests/test_parallel.py), so a measured one-GPU run fixes them for every rank count. The
simulator's stand-in mixture decides them differently from the UNet (the largest error of the
stand-in predictions: docs/performance.md); with ``pardiff simulate --strides`` it follows the
measured run's instead, and only the pricing (the compute profile, the network model) remains a
model. For each measured report given, the same flags are executed on each rank count, next to
the simulated sequential run and to any measured runs of the same case with more GPUs:

    python3 launch/sim_measured_strides.py --out OUT --profile h200-graphs --gpus 1,2,4,8 \\
        traces/results/2026-11-24_h200x2_perf/parallel2/arch_ddpm-church-256_ddpm-1000_{parasolver,paradigms}_1gpu.json

Writes OUT/predictions.json and OUT/predictions.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sim_compare import RUN_FLAGS            # the run flags that shape the work, as sim_compare re-executes traces
from sim_compare import simulate as _simulate


def simulate(*args) -> dict:
    return _simulate(*args, cwd=Path.cwd())


def flags_of(params: dict, keys=RUN_FLAGS) -> list:
    return [x for k in keys if params.get(k) is not None for x in (f"--{k.replace('_', '-')}", params[k])]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", help="--report JSON of measured one-GPU parasolver / paradigms runs")
    ap.add_argument("--out", required=True)
    ap.add_argument("--profile", default="h200-graphs")
    ap.add_argument("--network", default="nvlink")
    ap.add_argument("--gpus", default="1,2,4,8")
    args = ap.parse_args(argv)
    gpus = [int(g) for g in args.gpus.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, sequential = [], {}
    for path in args.reports:
        measured = json.loads(Path(path).read_text())
        params = measured["params"]
        if measured["algorithm"] not in ("parasolver", "paradigms") or measured["world_size"] != 1:
            raise SystemExit(f"{path}: not a one-rank parasolver / paradigms report")
        common = ["--network", args.network, "--profile", args.profile]
        if params["model"].startswith("arch:"):
            common.append("--stand-in")
        key = (params["model"], params["steps"], params["sampler"])
        if key not in sequential:
            seq = simulate("sequential", "--ranks", 1, *common,
                           *flags_of(params, ("model", "steps", "seed", "batch", "dtype", "sampler")))
            sequential[key] = seq["wall_s"]
        # measured runs of the same case on more GPUs: bench_parallel.py's file names (…_1gpu -> …_Ngpu)
        others = {g: Path(path.replace("_1gpu.json", f"_{g}gpu.json")) for g in gpus}
        for g in gpus:
            rep = simulate(measured["algorithm"], "--ranks", g, *common, *flags_of(params), "--strides", path)
            assert rep["iterations"] == measured["iterations"] and rep["nfe"] == measured["nfe"], path
            row = {"report": path, "algorithm": measured["algorithm"], "model": params["model"],
                   "window": params["window"], "subintervals": measured["subintervals"], "gpus": g,
                   "iterations": rep["iterations"], "nfe": rep["nfe"], "predicted_s": rep["wall_s"],
                   "predicted_sequential_s": sequential[key],
                   "predicted_speedup": sequential[key] / rep["wall_s"]}
            if others[g].is_file():
                row["measured_s"] = json.loads(others[g].read_text())["wall_s"]
                row["error"] = row["predicted_s"] / row["measured_s"] - 1
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {"profile": args.profile, "network": args.network, "gpus": gpus}
    (out / "predictions.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [f"Predicted with the measured runs' strides ({args.profile} profile, {args.network} network); "
             "speedup over the simulated sequential run.\n",
             "| algorithm | N | window p | GPUs | iterations | NFE | predicted s | predicted speedup | measured s | "
             "prediction error |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        measured = f"{r['measured_s']:.3f}" if "measured_s" in r else "—"
        error = f"{100 * r['error']:+.1f} %" if "error" in r else "—"
        lines.append(f"| {r['algorithm']} | {r['subintervals']} | {r['window']} | {r['gpus']} | {r['iterations']} | "
                     f"{r['nfe']} | {r['predicted_s']:.3f} | {r['predicted_speedup']:.2f}× | {measured} | {error} |")
    (out / "predictions.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
