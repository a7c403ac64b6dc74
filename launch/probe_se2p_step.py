#!/usr/bin/env python3
"""What SE2P's own arithmetic adds to a DDPM step on one GPU: the measurement behind the SE2P
rows of docs/performance.md ("SE2P on 2 GPUs").

One process, one GPU, the church UNet at batch 1, the real update functions
(``ddpm.step``, ``se2p.predictor``, ``se2p.integrate``). For N steps it issues

    sequential   ε, denoise                                 (the baseline's step)
    proc0        ε, denoise, x̂_pred (lines 6-8), integrate (line 9, --exchange swap)
    proc1        ε, denoise, integrate

back to back with no host wait, as a run with stream-ordered (NCCL) messages does, and times
the loop with CUDA events; ``proc0-sync`` adds one host wait per step where the message was
(what a transport that makes the host wait costs, e.g. NCCL before 2026-11-24). The messages
themselves are not here (one GPU): the 2-GPU estimate adds NCCL's measured latency per step.
It also times each update alone: GPU time (queued behind a sleeping stream, so the host's
issue time is hidden) and the host's issue time.

    python3 launch/probe_se2p_step.py OUT.json [--compile on] [--steps 100]
"""
import argparse
import json
import statistics
import time

import torch

from pardiff import seeds
from pardiff.algorithms.se2p import integrate, predictor
from pardiff.models import load_model
from pardiff.solvers import ddpm

GAMMA, RHO = 0.015, 1.35
NCCL_786KB_S = 28.6e-6       # ../shared/DESIGN.md: 2×H200, NCCL send/recv of a 786 KB latent, one way


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--model", default="arch:ddpm-church-256")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--compile", choices=("off", "on"), default="off")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    dev = torch.device("cuda")
    model = load_model(args.model, device=dev, dtype=getattr(torch, args.dtype))
    if args.compile == "on":
        model.enable_compile()
    model.enable_cuda_graphs()
    sched = model.schedule
    shape = (1, *model.sample_shape)
    jump = sched.T // args.steps
    ts = sched.timesteps(args.steps)
    x0 = torch.randn(shape, device=dev)
    for _ in range(3):
        model.eps(x0, ts[0])                 # compile and capture before any clock
    torch.cuda.synchronize()

    def noise(k):
        return seeds.gaussian(shape, seeds.seed_for(0, seeds.STEP, k), dev)

    def denoise(x, v, t, k):
        return ddpm.step(x, v, sched.alpha_bar(t), sched.alpha_bar(t - jump), noise(k), sched.clip)

    def x_pred(x, v, t, k):
        return predictor(sched, x, v, t, seeds.gaussian(shape, seeds.seed_for(0, seeds.PREDICTOR, k, 0), dev), RHO)

    received = torch.randn(shape, device=dev)

    def loop(kind):
        """Seconds per step of N steps issued back to back (the host waits only at the end,
        or once per step for proc0-sync)."""
        x = x0.clone()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for k, t in enumerate(ts):
            t_own = t + 1 if kind.startswith("proc0") else t     # Proc 0 runs at t_k + 1 (P = 2)
            v = model.eps(x, t_own)
            x = denoise(x, v, t_own, k)
            if kind == "sequential" or k == len(ts) - 1:
                continue
            if kind.startswith("proc0"):
                outgoing = x_pred(x, v, t_own, k)
                if kind == "proc0-sync":
                    torch.cuda.current_stream().synchronize()     # the host waits where the message is
                x = integrate(GAMMA, received, outgoing)
            else:
                x = integrate(GAMMA, x, received)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / len(ts)

    kinds = ("sequential", "proc0", "proc1", "proc0-sync")
    per_step = {k: [] for k in kinds}
    for _ in range(args.repeats):
        for kind in kinds:                   # interleaved, so drifts in clocks hit all alike
            per_step[kind].append(loop(kind))
    per_step = {k: statistics.median(v) for k, v in per_step.items()}

    x = torch.randn(shape, device=dev)
    v = torch.randn(shape, device=dev)
    t = ts[len(ts) // 2]
    updates = {"denoise": lambda: denoise(x, v, t, 0), "x_pred": lambda: x_pred(x, v, t, 0),
               "integrate": lambda: integrate(GAMMA, x, received)}
    update_times = {name: time_update(fn) for name, fn in updates.items()}

    seq = per_step["sequential"]
    estimate = {f"{k}+nccl": (per_step[k] + NCCL_786KB_S) / seq for k in ("proc0", "proc0-sync")}
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, model=args.model, dtype=args.dtype,
                  compile=args.compile, cuda_graphs="on", steps=args.steps, repeats=args.repeats,
                  date=time.strftime("%Y-%m-%d"),
                  ms_per_step={k: v * 1e3 for k, v in per_step.items()},
                  ratio_to_sequential={k: v / seq for k, v in per_step.items()},
                  two_gpu_estimate=dict(estimate, nccl_one_way_s=NCCL_786KB_S,
                                        how="(proc0 step + one NCCL message per step) / sequential step: "
                                            "with --exchange swap one message is on the critical path per step"),
                  update_us=update_times)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


def time_update(fn, n: int = 50) -> dict:
    """µs per call: on the GPU (calls queued behind a sleeping kernel, so the host's issue time
    is hidden) and on the host (issue time, the GPU idle)."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(int(2e8))              # ~0.1 s of GPU time: the host queues all n meanwhile
    start.record()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    issue = time.perf_counter() - t0
    end.record()
    end.synchronize()
    return {"gpu_us": start.elapsed_time(end) * 1e3 / n, "issue_us": issue * 1e6 / n}


if __name__ == "__main__":
    main()
