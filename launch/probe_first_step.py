#!/usr/bin/env python3
"""What a run's first sampler step costs on a GPU, after the runtime's warm-up, and why.

runtime.warm_up evaluates the network (and captures its CUDA graphs) before the clock, but not
the sampler's own per-step work. On 2xH200 the first traced DDPM step of every run took 51 ms
(sequential) and 6-17 ms (SE2P) against ~0.1 ms for the rest (traces/results/2026-11-24_h200x2_perf).
This probe times, in one fresh process after the same warm-up, each piece of a step twice
(first call, second call), each call alone between two synchronisations:

    python3 launch/probe_first_step.py --out probe.json [--model arch:ddpm-church-256 --dtype float16]

Run it under CUDA_MODULE_LOADING=EAGER as well to see whether the first call pays for loading
CUDA kernels lazily (the default since CUDA 11.7).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from pardiff import seeds
from pardiff.io import write_json
from pardiff.models import load_model
from pardiff.runtime import TORCH_DTYPES, warm_up
from pardiff.solvers import make_solver


def timed(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="arch:ddpm-church-256")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    device = torch.device("cuda")
    t0 = time.perf_counter()
    model = load_model(args.model, device=device, dtype=TORCH_DTYPES[args.dtype])
    if hasattr(model, "enable_cuda_graphs"):
        model.enable_cuda_graphs()
    warm_up(model, device, [1])
    warm_s = time.perf_counter() - t0
    shape = (1, *model.sample_shape)
    x = torch.zeros(shape, device=device)
    rows = {}
    for sampler in ("ddpm", "ddim"):
        solver = make_solver(sampler, model.schedule, 10)
        for call in ("first", "second"):
            noise, rows[f"{sampler} {call}: noise draw"] = timed(lambda: seeds.gaussian(shape, 7, device)) \
                if solver.stochastic else (None, None)
            eps, rows[f"{sampler} {call}: eps (graph replay)"] = timed(
                lambda: model.eps(x, torch.tensor(solver.timesteps[0]).repeat(1), None))
            _, rows[f"{sampler} {call}: step"] = timed(lambda: solver.step(x, eps, 0, None, noise=noise))
            _, rows[f"{sampler} {call}: predict_x0"] = timed(lambda: solver.predict_x0(x, eps, 0))
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "model": args.model,
              "dtype": args.dtype, "load_and_warm_up_s": round(warm_s, 2), "CUDA_MODULE_LOADING": os.environ.get("CUDA_MODULE_LOADING", "(unset)"),
              "ms": {k: None if v is None else round(v * 1e3, 3) for k, v in rows.items()}}
    write_json(args.out, result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
