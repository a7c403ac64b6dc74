#!/usr/bin/env python3
"""Scaling studies made with the simulator (docs/simulator.md).

1. **Networks** — SE2P (Algorithm 2, DDPM-20) and ParaSolver (DDIM-50) on 2 … 64 ranks: each
   rank count is executed once (``pardiff simulate``, H200 profile, the church-256 UNet priced
   and replaced by its stand-in), and its trace replayed under every network; control flow does
   not depend on time, so a replay is exactly the run over that network.
2. **ParaSolver's Table 5** — DDPM-1000, sequential vs ParaSolver vs ParaDiGMS on 1, 2, 4, 8
   GPUs of one H200 node, over NVLink (NCCL figures) and over today's host-staged MPI path.
3. **SE2P on 2 GPUs vs sequential DDPM on 1** (issue 6's target ≤ 1.05×) — N = 10, 20, 100,
   both exchanges (lines 9-10 as a round trip, or swapped), over each of ``--se2p-networks``
   (names or FILE.json, e.g. a link estimated from measured pieces).
4. **ParaSolver's Figure 1, the window size p** — bench_parallel.py's ``WINDOW_CASES`` (Table 5's
   DDPM-1000 settings, window p for both solvers) and ``SUBINTERVAL_CASES`` (ParaSolver's N at
   p = 32), on 1 and 8 GPUs over NVLink: the settings ``launch/bench_gpu.sh OUT window``
   measures on a GPU.

Writes OUT/scaling.json, OUT/table5.md, OUT/networks.md, OUT/se2p.md, OUT/window.md and
OUT/scaling_*.png for the studies that ran.

    python3 launch/sim_scaling.py --out traces/results/<date>_sim_scaling
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench_parallel import CASES, SUBINTERVAL_CASES, WINDOW_CASES, case_flags
from runner import shipped_or_file, simulate, stop_children_on_sigterm

NETWORKS = ["nvlink", "h200-mpi-staged", "pcie", "ib-hdr", "eth-100g", "eth-10g"]
MODEL = ["--model", "arch:ddpm-church-256", "--dtype", "float16", "--stand-in", "--profile", "h200", "--seed", "0",
         "--batch", "1"]
# study -> (flags, rank counts); SE2P on P procs evaluates at t_k + P - 1, so N = 20 allows P <= 49
STUDIES = {
    "se2p": (["se2p", "--steps", "20", "--gamma", "0.015", "--rho", "1.35"], [2, 4, 8, 16, 32]),
    "parasolver-ddim50": (["parasolver", "--sampler", "ddim", "--steps", "50", "--subintervals", "25",
                           "--precondition", "5", "--window", "25", "--tol", "0.005"], [2, 4, 8, 16, 32, 64]),
}
# the papers' DDPM-1000 settings (docs/algorithms/parasolver.md), as bench_parallel.py measures them
TABLE5 = {alg: case_flags("ddpm-1000", alg) for alg in ("sequential", "parasolver", "paradigms")}
SE2P_STEPS = [10, 20, 100]
PAPER_TABLE5 = {"parasolver": {1: 2.5, 2: 3.8, 4: 5.1, 8: 12.1}, "paradigms": {1: 1.4, 2: 2.1, 4: 3.3, 8: 4.6}}
WINDOW_GPUS = [1, 8]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--profile", default="h200", help="h200 (eager, default) | h200-graphs (CUDA graphs) | FILE.json")
    ap.add_argument("--studies", default="networks,table5", help="comma-separated: networks, table5, se2p, "
                                                                 "window (default: networks,table5)")
    ap.add_argument("--se2p-networks", default="nvlink,h200-mpi-staged",
                    help="networks of the se2p study: names or FILE.json (default: nvlink,h200-mpi-staged)")
    ap.add_argument("--window-cases", help="comma-separated: only these cases of the window study (default: "
                                           "WINDOW_CASES and SUBINTERVAL_CASES of bench_parallel.py)")
    args = ap.parse_args(argv)
    stop_children_on_sigterm()         # a time limit's SIGTERM stops the running jobs too
    args.profile = shipped_or_file(args.profile)       # the simulations run in a work folder
    model = [args.profile if a == "h200" else a for a in MODEL]
    studies = args.studies.split(",")
    unknown = set(studies) - {"networks", "table5", "se2p", "window"}
    if unknown:
        ap.error(f"--studies: unknown {', '.join(sorted(unknown))} (networks, table5, se2p, window)")
    chosen = args.window_cases.split(",") if args.window_cases else []
    if set(chosen) - set(WINDOW_CASES) - set(SUBINTERVAL_CASES):      # refused before any simulation runs
        ap.error(f"--window-cases: not in the window study: "
                 f"{', '.join(sorted(set(chosen) - set(WINDOW_CASES) - set(SUBINTERVAL_CASES)))}")
    out = Path(args.out).resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows = []
    for study, (flags, rank_counts) in STUDIES.items():
        for P in rank_counts if "networks" in studies else []:
            trace = work / f"{study}-{P}.h5"
            ex = simulate(*flags, *model, "--ranks", P, "--network", NETWORKS[0], "--trace", trace, cwd=work)
            for net in NETWORKS:
                rep = ex if net == NETWORKS[0] else simulate("--replay", trace, "--network", net, "--profile", args.profile,
                                                             cwd=work)
                comm = max(r["communication_s"] for r in rep["per_rank"])
                rows.append({"study": study, "ranks": P, "network": net, "wall_s": rep["wall_s"],
                             "max_rank_communication_s": comm, "iterations": ex.get("iterations"), "nfe": ex["nfe"]})
                print(json.dumps(rows[-1]), flush=True)
            trace.unlink()
    # the sequential baselines run on one rank: no messages, so one run serves every network
    def sequential_s(*flags) -> float:
        return simulate(*flags, *model, "--ranks", 1, "--network", NETWORKS[0], cwd=work)["wall_s"]

    table5 = []
    seq = sequential_s(*TABLE5["sequential"]) if {"table5", "window"} & set(studies) else None
    for net in ("nvlink", "h200-mpi-staged") if "table5" in studies else []:
        for alg in ("parasolver", "paradigms"):
            for G in (1, 2, 4, 8):
                rep = simulate(*TABLE5[alg], *model, "--ranks", G, "--network", net, cwd=work)
                table5.append({"network": net, "algorithm": alg, "gpus": G, "wall_s": rep["wall_s"],
                               "sequential_s": seq, "speedup": seq / rep["wall_s"], "iterations": rep["iterations"],
                               "nfe": rep["nfe"], "paper_speedup": PAPER_TABLE5[alg][G]})
                print(json.dumps(table5[-1]), flush=True)
    window = []
    sweep = [(alg, case) for alg in ("paradigms", "parasolver") for case in WINDOW_CASES] \
        + [("parasolver", case) for case in SUBINTERVAL_CASES]
    if args.window_cases:
        sweep = [(alg, case) for alg, case in sweep if case in chosen]
    for alg, case in sweep if "window" in studies else []:
        for G in WINDOW_GPUS:
            rep = simulate(*case_flags(case, alg), *model, "--ranks", G, "--network", "nvlink", cwd=work)
            window.append({"algorithm": alg, "case": case, "window": CASES[case][alg]["window"],
                           "subintervals": CASES[case][alg].get("subintervals"),
                           "precondition": CASES[case][alg].get("precondition"), "gpus": G,
                           "wall_s": rep["wall_s"], "sequential_s": seq, "speedup": seq / rep["wall_s"],
                           "iterations": rep["iterations"], "nfe": rep["nfe"]})
            print(json.dumps(window[-1]), flush=True)
    se2p = []
    se2p_seq = {N: sequential_s("sequential", "--sampler", "ddpm", "--steps", N) for N in SE2P_STEPS} \
        if "se2p" in studies else {}
    for net in args.se2p_networks.split(",") if "se2p" in studies else []:
        net = shipped_or_file(net)
        for N in SE2P_STEPS:
            seq = se2p_seq[N]
            for exchange in ("roundtrip", "swap"):
                rep = simulate("se2p", "--steps", N, "--exchange", exchange, *model, "--ranks", 2, "--network", net,
                              cwd=work)
                se2p.append({"network": Path(net).stem if net.endswith(".json") else net, "steps": N,
                             "exchange": exchange, "sequential_s": seq, "wall_s": rep["wall_s"],
                             "ratio_to_sequential": rep["wall_s"] / seq})
                print(json.dumps(se2p[-1]), flush=True)
    work.rmdir() if not any(work.iterdir()) else None
    meta = {"profile": f"{args.profile} (pardiff/sim/profiles), arch:ddpm-church-256 float16, stand-in", "date":
            time.strftime("%Y-%m-%d"), "wall_s": time.time() - t0, "studies": studies}
    (out / "scaling.json").write_text(json.dumps({"meta": meta, "networks": rows, "table5": table5, "se2p": se2p,
                                                  "window": window}, indent=1))
    if window:
        lines = ["| method | N | M | window p | GPUs | predicted wall (s) | speedup | iterations | NFE |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['algorithm']} | {r['subintervals'] or ''} | {r['precondition'] or ''} | {r['window']} "
                  f"| {r['gpus']} | {r['wall_s']:.3f} | {r['speedup']:.2f}× | {r['iterations']} | {r['nfe']} |"
                  for r in window]
        (out / "window.md").write_text(f"sequential DDPM-1000 on 1 GPU: {seq:.3f} s\n\n" + "\n".join(lines) + "\n")
        print((out / "window.md").read_text())
    if se2p:
        lines = ["| network | N | exchange | sequential, 1 GPU (ms) | SE2P, 2 GPUs (ms) | ratio (target ≤ 1.05×) |",
                 "|---|---:|---|---:|---:|---:|"]
        lines += [f"| {r['network']} | {r['steps']} | {r['exchange']} | {r['sequential_s'] * 1e3:.1f} "
                  f"| {r['wall_s'] * 1e3:.1f} | {r['ratio_to_sequential']:.3f}× |" for r in se2p]
        (out / "se2p.md").write_text("\n".join(lines) + "\n")
        print((out / "se2p.md").read_text())
    if "table5" not in studies and "networks" not in studies:
        return 0

    lines = ["| network | method | GPUs | predicted wall (s) | speedup | paper (RTX 3090) | iterations | NFE |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['network']} | {r['algorithm']} | {r['gpus']} | {r['wall_s']:.3f} | {r['speedup']:.2f}× "
              f"| {r['paper_speedup']}× | {r['iterations']} | {r['nfe']} |" for r in table5]
    if table5:
        (out / "table5.md").write_text("\n".join(lines) + "\n")
    lines = ["| study | ranks | " + " | ".join(NETWORKS) + " |", "|---|---|" + "---|" * len(NETWORKS)]
    for study in STUDIES if "networks" in studies else []:
        for P in STUDIES[study][1]:
            cells = {r["network"]: r["wall_s"] for r in rows if r["study"] == study and r["ranks"] == P}
            lines.append(f"| {study} | {P} | " + " | ".join(f"{cells[n] * 1e3:.1f}" for n in NETWORKS) + " |")
    if rows:
        (out / "networks.md").write_text("wall time (ms) predicted\n\n" + "\n".join(lines) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    for study in STUDIES if "networks" in studies else []:
        fig, ax = plt.subplots(figsize=(6, 4))
        for net in NETWORKS:
            pts = sorted((r["ranks"], r["wall_s"]) for r in rows if r["study"] == study and r["network"] == net)
            ax.plot(*zip(*pts), marker="o", label=net)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("ranks (GPUs)")
        ax.set_ylabel("predicted wall time (s)")
        ax.set_title(f"{study}, church-256 UNet fp16 on H200 (simulated)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"scaling_{study}.png", dpi=90)
        plt.close(fig)
    if not table5:
        print((out / "networks.md").read_text())
        return 0
    fig, ax = plt.subplots(figsize=(6, 4))
    for net, style in (("nvlink", "-"), ("h200-mpi-staged", "--")):
        for alg in ("parasolver", "paradigms"):
            pts = [(r["gpus"], r["speedup"]) for r in table5 if r["network"] == net and r["algorithm"] == alg]
            ax.plot(*zip(*pts), style, marker="o", label=f"{alg}, {net} (simulated)")
    for alg, marker in (("parasolver", "s"), ("paradigms", "^")):
        ax.plot(list(PAPER_TABLE5[alg]), list(PAPER_TABLE5[alg].values()), ":", marker=marker, color="gray",
                label=f"{alg}, paper Table 5 (RTX 3090)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("GPUs")
    ax.set_ylabel("speedup over sequential DDPM-1000")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "scaling_table5.png", dpi=90)
    print((out / "table5.md").read_text())
    if rows:
        print((out / "networks.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
