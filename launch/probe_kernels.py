#!/usr/bin/env python3
"""Which kernels make the church UNet (fp16, one GPU) fastest: the probes behind the choices in
docs/performance.md ("Model evaluation"). Median ms of 20 evaluations after 5, at batch 1, 8, 32,
and each variant's largest |difference| from the first one (contiguous eager).

    python3 launch/probe_kernels.py layouts OUT.json   # contiguous vs channels_last, eager vs CUDA graph,
                                                      # cudnn.benchmark off / on
    python3 launch/probe_kernels.py compile OUT.json   # eager vs torch.compile, each with and without graphs
"""
import json
import statistics
import sys
import time

import torch

from pardiff.models.graphs import CudaGraphs
from pardiff.models.hub import load_arch

BATCHES = (1, 8, 32)


def time_variant(fn, memory_format=torch.contiguous_format):
    """{batch: (median seconds, output, seconds of the first 5 calls)} for ``fn(x, t, None)``."""
    out = {}
    for b in BATCHES:
        g = torch.Generator(device="cuda").manual_seed(b)
        x = torch.randn(b, 3, 256, 256, device="cuda", generator=g).half().contiguous(memory_format=memory_format)
        t = torch.full((b,), 500, device="cuda", dtype=torch.long)
        with torch.inference_mode():
            t0 = time.perf_counter()
            for _ in range(5):
                y = fn(x, t, None)
            torch.cuda.synchronize()
            warm = time.perf_counter() - t0
            times = []
            for _ in range(20):
                t0 = time.perf_counter()
                y = fn(x, t, None)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        out[b] = (statistics.median(times), y.float().clone(), warm)
    return out


def main(what: str, path: str) -> None:
    rows, first = [], {}

    def add(measured, **labels):
        for b, (seconds, y, warm) in measured.items():
            first.setdefault(b, y)
            rows.append(dict(labels, batch=b, ms=seconds * 1e3, warmup_s=warm,
                             max_abs_diff_to_first=(y - first[b]).abs().max().item()))
            print(json.dumps(rows[-1]), flush=True)

    if what == "layouts":
        for bench in (False, True):
            torch.backends.cudnn.benchmark = bench
            for name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
                model = load_arch("ddpm-church-256", device="cuda", dtype=torch.float16)
                model.module.to(memory_format=fmt)
                for graphs in (False, True):
                    fn = CudaGraphs(model._network, model.device) if graphs else model._network
                    add(time_variant(fn, fmt), cudnn_benchmark=bench, format=name, graphs=graphs)
    elif what == "compile":
        model = load_arch("ddpm-church-256", device="cuda", dtype=torch.float16)
        compiled = torch.compile(model._network, dynamic=False)
        for name, fn in (("eager", model._network), ("eager+graphs", CudaGraphs(model._network, model.device)),
                         ("compile", compiled), ("compile+graphs", CudaGraphs(compiled, model.device))):
            add(time_variant(fn), variant=name)
    else:
        raise SystemExit(f"probe_kernels.py: layouts or compile, not {what!r}")
    with open(path, "w") as f:
        json.dump({"probe": what, "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                   "rows": rows}, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
