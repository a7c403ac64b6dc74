#!/usr/bin/env python3
"""Sequential vs ParaSolver vs ParaDiGMS on 1..G GPUs, side by side in one job.

    python3 launch/bench_parallel.py --out results/ --models gmm,arch:ddpm-church-256 \
        --cases ddpm-1000,ddim-50 --gpus 1,2

Each case runs `pardiff run` through launch/mpirun.sh (so any MPI launcher works) with
--report, then this script checks every parallel sample against the sequential one
(max and RMS difference) before it computes a speedup, and writes one JSON per model and
case into --out with the device, software versions and the exact command lines.
Results land under traces/results/ once copied back from the GPU machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from runner import run_child, stop_children_on_sigterm

HERE = Path(__file__).resolve().parent

# The papers' settings for LSUN Church (ParaSolver §5.1, Tables 2-3; ParaDiGMS Table 5).
CASES = {
    "ddpm-1000": dict(sampler="ddpm", steps=1000,
                      parasolver=dict(subintervals=100, precondition=10, window=32, tol=0.55),
                      paradigms=dict(window=32, tol=0.5)),
    # ParaSolver with one subinterval per step (N = S), the rest as above: ParaDiGMS's problem size
    # with ParaSolver's initialisation (M preconditioning steps, new points from the clean estimate).
    "ddpm-1000-fine": dict(sampler="ddpm", steps=1000,
                           parasolver=dict(subintervals=1000, precondition=10, window=32, tol=0.55),
                           paradigms=dict(window=32, tol=0.5)),
    "ddim-50": dict(sampler="ddim", steps=50,
                    parasolver=dict(subintervals=25, precondition=5, window=25, tol=0.005),
                    paradigms=dict(window=50, tol=0.001)),
    "ddim-25": dict(sampler="ddim", steps=25,
                    parasolver=dict(subintervals=25, precondition=5, window=25, tol=0.005),
                    paradigms=dict(window=25, tol=0.001)),
    # SE2P (Algorithm 1 on 2 GPUs) vs its DDPM baseline on 1 GPU, same N: SE2P changes the sample
    # by design, so its check is against the single-process simulation of the same run (bit for bit)
    "se2p-10": dict(sampler="ddpm", steps=10, se2p=dict()),
    "se2p-20": dict(sampler="ddpm", steps=20, se2p=dict()),
    "se2p-100": dict(sampler="ddpm", steps=100, se2p=dict()),
    "dpmsolver-25": dict(sampler="dpmsolver", steps=25,
                         parasolver=dict(subintervals=25, precondition=5, window=25, tol=0.005),
                         paradigms=dict(window=25, tol=0.001)),
}
# ParaSolver's Table 3, iterations against the preconditioning steps M (DDPM-1000): the ddpm-1000
# case at M = 2, 5, 10, 15, at its δ = 0.55 and at δ = 0.05 (`--algorithms parasolver`).
CASES.update({f"ddpm-1000-m{m}-tol{tol:g}": dict(sampler="ddpm", steps=1000, paradigms=CASES["ddpm-1000"]["paradigms"],
                                                 parasolver=dict(subintervals=100, precondition=m, window=32, tol=tol))
              for m in (2, 5, 10, 15) for tol in (0.55, 0.05)})
# ParaSolver's Figure 1, the window size p (both solvers; ParaSolver's M = 10 preconditioning steps need
# p >= M, so M = p below 10), and ParaSolver's subinterval count N with its window p (`--algorithms
# parasolver`; N = 200 / 500 / 1000 at p = 8 / 16 are the simulator's best on one GPU: L = S/N = 5, 2, 1
# steps per subinterval); DDPM-1000 otherwise as above. launch/sim_scaling.py --studies window predicts
# the same settings.
WINDOWS = [4, 6, 8, 10, 16, 24, 32, 36, 48, 64]
SUBINTERVALS = [(50, 32), (200, 32), (200, 8), (500, 16), (1000, 16)]      # (N, p)


def _parasolver(n: int, p: int) -> dict:
    return dict(CASES["ddpm-1000"]["parasolver"], subintervals=n, window=p, precondition=min(p, 10))


CASES.update({f"ddpm-1000-p{p}": dict(sampler="ddpm", steps=1000, parasolver=_parasolver(100, p),
                                      paradigms=dict(CASES["ddpm-1000"]["paradigms"], window=p))
              for p in WINDOWS if p != 32})
SUBINTERVAL_CASES = [f"ddpm-1000-n{n}" + (f"-p{p}" if p != 32 else "") for n, p in SUBINTERVALS]
CASES.update({name: dict(sampler="ddpm", steps=1000, paradigms=CASES["ddpm-1000"]["paradigms"],
                         parasolver=_parasolver(n, p)) for name, (n, p) in zip(SUBINTERVAL_CASES, SUBINTERVALS)})
WINDOW_CASES = [f"ddpm-1000-p{p}" if p != 32 else "ddpm-1000" for p in WINDOWS]


def case_flags(case_name: str, algorithm: str) -> list[str]:
    """`pardiff run/simulate` arguments of one algorithm of a case (sequential: the sampler alone)"""
    case = CASES[case_name]
    params = case.get(algorithm, {})
    return [algorithm, "--sampler", case["sampler"], "--steps", str(case["steps"]),
            *[f"--{k}={v}" for k, v in params.items()]]


def run(cmd: list[str], timeout: float, log) -> tuple[int, float]:
    log.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
    log.flush()
    t0 = time.time()
    rc = run_child(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
    return rc, time.time() - t0


def device_info() -> dict:
    info = {"host": platform.node(), "python": platform.python_version()}
    try:
        import torch
        info.update(torch=torch.__version__, cuda=torch.version.cuda,
                    gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
    except Exception as e:  # the report still says where it ran
        info["torch_error"] = repr(e)
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    return info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for the results JSON, logs and samples")
    ap.add_argument("--models", default="gmm")
    ap.add_argument("--cases", default="ddim-50", help=", ".join(CASES))
    ap.add_argument("--gpus", default="1,2", help="rank counts to run the parallel solvers on")
    ap.add_argument("--algorithms", default="parasolver,paradigms", help="parallel solvers to compare")
    ap.add_argument("--dtype", default="float16", help="network dtype of arch: models")
    ap.add_argument("--device", default="cuda", help="cuda (one GPU per rank) or cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=300, help="seconds per run")
    ap.add_argument("--trace", action="store_true", help="also record a trace of every run")
    ap.add_argument("--cuda-graphs", default="auto", help="auto | on | off, for every run (sequential included)")
    ap.add_argument("--compile", default="off", help="off | on: torch.compile for every run of a diffusers "
                                                     "network (sequential included; gmm has no network)")
    ap.add_argument("--transport", default="auto", help="auto | mpi | nccl | gloo")
    ap.add_argument("--agree-rms", type=float, default=0.05,
                    help="largest RMS difference from the sequential sample (on the [-1, 1] scale) for which "
                         "a parallel run's speedup is reported (default %(default)s)")
    ap.add_argument("--exchange", default="swap", help="SE2P's exchange: roundtrip | swap (default)")
    args = ap.parse_args()
    stop_children_on_sigterm()         # a time limit's SIGTERM stops the running jobs too
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    launcher = [str(HERE / "mpirun.sh")]
    # the ranks run this interpreter, by absolute path (Open MPI puts its own bin/ first on their PATH)
    os.environ.setdefault("PARDIFF", f"{sys.executable} -m pardiff")
    gpus = [int(g) for g in args.gpus.split(",")]
    device = device_info()
    log = open(out / "bench.log", "a")
    for model in args.models.split(","):
        for case_name in args.cases.split(","):
            case = CASES[case_name]
            tag = f"{model.replace(':', '_')}_{case_name}"
            common = ["--model", model, "--steps", str(case["steps"]), "--sampler", case["sampler"],
                      "--seed", str(args.seed), "--batch", "1", "--device", args.device]
            if model.startswith("arch:"):
                common += ["--dtype", args.dtype]
            common += ["--cuda-graphs", args.cuda_graphs]
            compiled = args.compile == "on" and not model.startswith("gmm")
            if compiled:
                common += ["--compile", "on"]
            rows = []
            plan = [("sequential", 1, {})]
            if "se2p" in case:
                plan += [("se2p", 2, dict(case["se2p"], exchange=args.exchange, transport=args.transport))]
            else:
                plan += [(alg, g, dict(case[alg], transport=args.transport))
                         for alg in args.algorithms.split(",") for g in gpus]
            for alg, g, params in plan:
                name = f"{tag}_{alg}_{g}gpu"
                flags = [f"--{k}={v}" for k, v in params.items()]
                extra = ["--trace", str(out / f"{name}.h5")] if args.trace else []
                cmd = launcher + [str(g), "run", alg, *common, *flags, "--out", str(out / f"{name}.npy"),
                                  "--report", str(out / f"{name}.json"), *extra]
                rc, elapsed = run(cmd, args.timeout, log)
                row = {"algorithm": alg, "gpus": g, "params": params, "rc": rc, "elapsed_s": elapsed,
                       "command": " ".join(shlex.quote(c) for c in cmd).replace(str(HERE), "launch")}
                if rc == 0:
                    report = json.loads((out / f"{name}.json").read_text())
                    row.update(wall_s=report["wall_s"], nfe=report["nfe"], iterations=report.get("iterations"),
                               model_calls=[r["model_calls"] for r in report["per_rank"]],
                               gpu_memory_peak_gib=max((r["gpu_memory_peak_gib"] for r in report["per_rank"]
                                                        if r.get("gpu_memory_peak_gib") is not None), default=None))
                rows.append(row)
                print(f"{name}: rc={rc} " + (f"wall {row['wall_s']:.3f} s nfe {row['nfe']} "
                                              f"iters {row['iterations']}" if rc == 0 else ""), flush=True)
            seq = rows[0]
            if seq["rc"] == 0:
                base = np.load(out / f"{tag}_sequential_1gpu.npy")
                for row in rows[1:]:
                    if row["rc"] != 0:
                        continue
                    x = np.load(out / f"{tag}_{row['algorithm']}_{row['gpus']}gpu.npy")
                    if row["algorithm"] == "se2p":
                        # the same SE2P run on virtual ranks in one process: the same arithmetic on
                        # the same device, so the same sample bit for bit if the messages were right
                        sim = out / f"{tag}_se2p_sim.npy"
                        cmd = [sys.executable, "-m", "pardiff", "simulate", "se2p", "--ranks", "2", *common,
                               "--exchange", args.exchange, "--out", str(sim)]
                        rc, _ = run(cmd, args.timeout, log)
                        row["equals_simulation"] = rc == 0 and bool(np.array_equal(x, np.load(sim)))
                        if not row["equals_simulation"]:
                            continue               # no speedup for a run that did not check out
                    # the samples are checked before any speedup is reported
                    row["max_abs_diff_vs_sequential"] = float(np.abs(x - base).max())
                    row["rms_diff_vs_sequential"] = float(np.sqrt(((x - base) ** 2).mean()))
                    row["agrees"] = row["rms_diff_vs_sequential"] <= args.agree_rms or row["algorithm"] == "se2p"
                    # a speedup is reported only for a run whose sample checked out
                    row["speedup" if row["agrees"] else "speedup_unchecked"] = seq["wall_s"] / row["wall_s"]
            result = {"model": model, "case": case_name, "sampler": case["sampler"], "steps": case["steps"],
                      "dtype": args.dtype if model.startswith("arch:") else "float64 (gmm)", "device": device,
                      "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cuda_graphs": args.cuda_graphs,
                      "compile": "on" if compiled else "off",
                      "transport": args.transport, "rows": rows}
            name = tag if args.algorithms == "parasolver,paradigms" else f"{tag}_{args.algorithms.replace(',', '_')}"
            (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
