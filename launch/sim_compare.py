#!/usr/bin/env python3
"""The simulator against measured GPU traces: predicted wall time next to the recorded one.

For each trace (measured with ``--trace`` on GPUs), three predictions:
- ``replay recorded``: ``pardiff simulate --replay T --network recorded`` (must give back the
  recorded time: checks the dependency walk);
- ``replay model``: replay with the device profile and the network model (compute and messages
  modelled; host work and the time between events kept as recorded);
- ``execute``: ``pardiff simulate ALGO --ranks P`` with the trace's own run flags, the profile and
  the network: everything modelled, the algorithm executed on CPU (only for cases listed with
  ``--execute``: a 114 M-parameter UNet is slow here).

Writes OUT/validation.json and OUT/validation.md.

    python3 launch/sim_compare.py --out traces/results/2026-11-23_h200_sim --profile h200 \
        --network h200-mpi-staged traces/h200x2/*.h5 traces/h200/*.h5 --execute se2p_church_ddpm10 ...
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pardiff.config import FLAG_ALGORITHMS
from pardiff.trace.reader import load_trace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner import shipped_or_file, simulate, stop_children_on_sigterm  # noqa: E402

RUN_FLAGS = ("model", "steps", "seed", "batch", "dtype", "sampler", "subintervals", "precondition", "window", "tol",
             "gamma", "rho", "integration", "mu_pred", "seed_sharing", "return_latent", "exchange", "clean_estimate",
             "last_variance", "missing_history", "class_label", "eval_batch")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--profile", default="h200")
    ap.add_argument("--network", default="h200-mpi-staged")
    ap.add_argument("--execute", nargs="*", default=[], help="trace names (no .h5) to also predict by execution")
    ap.add_argument("--tol-zero", nargs="*", default=[],
                    help="of those, runs that never stopped early (random weights sweep every point): executed "
                         "with --tol 0, which sweeps the same way on the stand-in")
    args = ap.parse_args(argv)
    stop_children_on_sigterm()         # a time limit's SIGTERM stops the running jobs too
    # the runs work in --out: a profile or network given as a file is named from here
    args.profile, args.network = shipped_or_file(args.profile), shipped_or_file(args.network)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in args.traces:
        trace, name = load_trace(path), Path(path).stem
        params = trace.attrs["params"]
        device = trace.rank_attrs[0].get("device", "?")
        row = {"trace": path, "algorithm": trace.attrs["algorithm"], "ranks": trace.world_size,
               "model": params["model"], "dtype": params["dtype"], "steps": params["steps"], "device": device}
        cwd = str(out)
        rec = simulate("--replay", Path(path).resolve(), "--network", "recorded", cwd=cwd)
        row["measured_s"] = rec["recorded_wall_s"]
        row["replay_recorded_s"] = rec["wall_s"]
        try:
            mod = simulate("--replay", Path(path).resolve(), "--network", args.network, "--profile", args.profile,
                           cwd=cwd)
            row["replay_model_s"] = mod["wall_s"]
        except SystemExit as e:                         # no shipped profile for this model and dtype
            row["replay_model_error"] = str(e).splitlines()[-1]
        if name in args.execute:
            params = dict(params, tol=0.0) if name in args.tol_zero else params
            algorithm = trace.attrs["algorithm"]
            flags = [x for k in RUN_FLAGS if params.get(k) is not None and algorithm in FLAG_ALGORITHMS.get(k, (algorithm,))
                     for x in (f"--{k.replace('_', '-')}", params[k])]      # the flags this algorithm takes
            if params["model"].startswith("arch:"):
                flags.append("--stand-in")
            t0 = time.time()
            ex = simulate(trace.attrs["algorithm"], "--ranks", trace.world_size, *flags, "--network", args.network,
                          "--profile", args.profile, cwd=cwd)
            iters = [int(ev["iter"].max()) + 1 for ev in trace.events.values() if len(ev) and ev["iter"].max() >= 0]
            row.update(execute_s=ex["wall_s"], execute_host_s=time.time() - t0, execute_iterations=ex.get("iterations"),
                       measured_iterations=max(iters) if iters else None, execute_flags=" ".join(map(str, flags)))
        for key in ("replay_recorded_s", "replay_model_s", "execute_s"):
            if key in row:
                row[key.replace("_s", "_error")] = row[key] / row["measured_s"] - 1
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "trace"}), flush=True)
    meta = {"profile": args.profile, "network": args.network, "date": time.strftime("%Y-%m-%d")}
    (out / "validation.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))

    def cell(r, key):
        return f"{r[key] * 1e3:.1f} ({100 * r[key.replace('_s', '_error')]:+.1f} %)" if key in r else "—"
    lines = ["| trace | ranks | measured (ms) | replay, recorded costs | replay, modelled | execute, modelled |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {Path(r['trace']).stem} | {r['ranks']} | {r['measured_s'] * 1e3:.1f} | {cell(r, 'replay_recorded_s')} "
              f"| {cell(r, 'replay_model_s')} | {cell(r, 'execute_s')} |" for r in rows]
    (out / "validation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
