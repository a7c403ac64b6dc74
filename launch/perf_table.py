#!/usr/bin/env python3
"""Markdown tables of a launch/bench_gpu.sh results folder (the tables of docs/performance.md).

    python3 launch/perf_table.py traces/results/2026-11-23_h200_perf
"""
from __future__ import annotations

import glob
import json
import os
import statistics
import sys


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def model_table(folder):
    runs = {g: os.path.join(folder, f"model_church_fp16_graphs-{g}.json") for g in ("off", "on")}
    if not all(os.path.isfile(p) for p in runs.values()):
        return
    off, on = load(runs["off"]), load(runs["on"])
    print(f"ε evaluation, {off['model']} {off['dtype']}, {off['device']} (median of {off['repeats']})\n")
    print("| batch | eager ms | CUDA graph ms | ratio | graph ms per sample |\n|---:|---:|---:|---:|---:|")
    for b, e, g in zip(off["batch"], off["seconds"], on["seconds"]):
        print(f"| {b} | {e * 1e3:.1f} | {g * 1e3:.1f} | {e / g:.2f}× | {g * 1e3 / b:.2f} |")
    print()


def comm_table(folder):
    files = sorted(glob.glob(os.path.join(folder, "comm_*.json")))
    for path in files:
        d = load(path)
        print(f"{os.path.basename(path)}: path {d['path']}, {d['ranks']} ranks ({d['local_size']} on the node), "
              f"{d['device']}, {d['mpi'][:40]}\n")
        print("| bytes | one way µs | GB/s | reference | reference µs | ratio |\n|---:|---:|---:|---|---:|---:|")
        for r in d["rows"]:
            ref = (r.get("reference", ""), f"{r['reference_one_way_s'] * 1e6:.1f}", f"{r['ratio_to_reference']:.2f}×") \
                if "reference" in r else ("", "", "")
            print(f"| {r['nbytes']} | {r['one_way_s'] * 1e6:.1f} | {r['nbytes'] / r['one_way_s'] / 1e9:.2f} | "
                  f"{ref[0]} | {ref[1]} | {ref[2]} |")
        print()


def comm_runs_table(folder):
    """Runs of one path repeated, alternating with another (comm_<name>_<run>.json): per size, the
    median over runs of each run's one-way median [min-max], and the median ratio to its reference."""
    runs = {}
    for path in glob.glob(os.path.join(folder, "comm_*_*.json")):
        name, run = os.path.basename(path)[len("comm_"):-len(".json")].rsplit("_", 1)
        if run.isdigit():
            runs.setdefault(name, []).append(load(path))
    if not runs:
        return
    names = sorted(runs)
    print("Repeated runs, one way µs: median over runs [min-max], ratio to the reference (median)\n")
    print("| bytes | " + " | ".join(f"{n} ({len(runs[n])} runs) | {n} ratio" for n in names) + " |\n"
          "|---:|" + "---:|---:|" * len(names))
    for nbytes in sorted({r["nbytes"] for ds in runs.values() for d in ds for r in d["rows"]}):
        cells = []
        for name in names:
            rows = [r for d in runs[name] for r in d["rows"] if r["nbytes"] == nbytes]
            times = [r["one_way_s"] * 1e6 for r in rows]
            ratios = [r["ratio_to_reference"] for r in rows if "ratio_to_reference" in r]
            cells.append(f"{statistics.median(times):.1f} [{min(times):.0f}-{max(times):.0f}] | "
                         + (f"{statistics.median(ratios):.2f}×" if ratios else ""))
        print(f"| {nbytes} | " + " | ".join(cells) + " |")
    print()


def tracing_table(folder):
    files = sorted(p for p in glob.glob(os.path.join(folder, "tracing_*.json")) if not p.endswith(("-on.json", "-off.json")))
    if not files:
        return
    print("| run | ranks | trace off ms (range) | trace on ms (range) | overhead | median of pairs | runs each |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for path in files:
        d = load(path)
        p = d["params"]
        spread = {m: f"{min(d[f'wall_s_trace_{m}']) * 1e3:.1f}-{max(d[f'wall_s_trace_{m}']) * 1e3:.1f}" for m in ("on", "off")}
        paired = f"{100 * d['overhead_paired']:+.2f} %" if "overhead_paired" in d else ""   # from 2026-11-24 on
        print(f"| {d['algorithm']} {p['sampler']}-{p['steps']} {p['model']} | {d['world_size']} | "
              f"{d['median_off_s'] * 1e3:.1f} ({spread['off']}) | {d['median_on_s'] * 1e3:.1f} ({spread['on']}) | "
              f"{100 * d['overhead']:+.2f} % | {paired} | {d['repeats']} |")
    print()


def parallel_table(folder):
    """Every parallel*/ folder of bench_parallel.py runs, one table each. The check column: a solver's
    RMS distance to the sequential sample; SE2P makes another sample by design, so its check is the
    single-process simulation's sample, bit for bit."""
    for sub in sorted(glob.glob(os.path.join(folder, "parallel*", ""))):
        rows = [load(p) for p in sorted(glob.glob(os.path.join(sub, "*.json")))]
        rows = [d for d in rows if "rows" in d and "case" in d]
        if not rows:
            continue
        print(f"{os.path.basename(os.path.dirname(sub))}/ ({rows[0]['date']})\n")
        print("| model | case | algorithm | GPUs | wall s | NFE | iterations | RMS vs sequential (SE2P: = simulation) "
              "| speedup |\n|---|---|---|---:|---:|---:|---:|---:|---:|")
        for d in rows:
            for r in d["rows"]:
                if r.get("rc") != 0:
                    print(f"| {d['model']} | {d['case']} | {r['algorithm']} | {r['gpus']} | failed (rc {r['rc']}) | | | | |")
                    continue
                rms = r.get("rms_diff_vs_sequential")
                check = "" if rms is None else f"{rms:.4f}"
                if "equals_simulation" in r:
                    check = "= simulation" if r["equals_simulation"] else "≠ simulation"
                speed = f"{r['speedup']:.2f}×" if "speedup" in r else \
                    (f"({r['speedup_unchecked']:.2f}×, sample disagrees)" if "speedup_unchecked" in r else "1 (baseline)")
                print(f"| {d['model']} | {d['case']} | {r['algorithm']} | {r['gpus']} | {r['wall_s']:.3f} | {r['nfe']} | "
                      f"{r.get('iterations') or ''} | {check} | {speed} |")
        print()


def window_table(folder):
    """bench_gpu.sh's window part (ParaSolver's Figure 1) next to the simulator's prediction, if folder/sim
    holds launch/sim_scaling.py --studies window's scaling.json"""
    runs = [load(p) for p in sorted(glob.glob(os.path.join(folder, "window", "*.json")))]
    runs = [d for d in runs if "rows" in d and "case" in d]
    sim = os.path.join(folder, "sim", "scaling.json")
    predicted = {(r["case"], r["algorithm"], r["gpus"]): r for r in load(sim)["window"]} if os.path.isfile(sim) else {}
    for model in sorted({d["model"] for d in runs}):
        print(f"{model}, DDPM-1000, one GPU: measured (sample checked against the sequential one) and, for the "
              f"church UNet, predicted by the simulator\n")
        print("| algorithm | N | M | window p | sequential s | wall s | speedup | predicted 1 GPU | predicted 8 GPUs "
              "| iterations | NFE | RMS vs sequential |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        rows = [(d, r) for d in runs if d["model"] == model for r in d["rows"][1:] if r.get("rc") == 0]
        rows.sort(key=lambda dr: (dr[1]["algorithm"], dr[1]["params"].get("subintervals", 0), dr[1]["params"]["window"]))
        for d, r in rows:
            seq, q = d["rows"][0], r["params"]
            speed = f"{r['speedup']:.2f}×" if "speedup" in r else f"({r['speedup_unchecked']:.2f}×, disagrees)"
            pred = [predicted.get((d["case"], r["algorithm"], g)) if model.startswith("arch:") else None for g in (1, 8)]
            pred = [f"{x['speedup']:.2f}× ({x['wall_s']:.2f} s)" if x else "" for x in pred]
            print(f"| {r['algorithm']} | {q.get('subintervals', '')} | {q.get('precondition', '')} | {q['window']} "
                  f"| {seq['wall_s']:.3f} | {r['wall_s']:.3f} | {speed} | {pred[0]} | {pred[1]} | {r['iterations']} "
                  f"| {r['nfe']} | {r['rms_diff_vs_sequential']:.4f} |")
        print()


def main() -> int:
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        sys.stderr.write("usage: launch/perf_table.py RESULTS_FOLDER\n")
        return 2
    for table in (model_table, comm_table, comm_runs_table, tracing_table, parallel_table, window_table):
        table(sys.argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
