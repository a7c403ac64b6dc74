"""``pardiff bench comm``: one-way message time between ranks 0 and 1 per message size and path.

Run under the launcher, two ranks or more (the others wait): ``mpiexec -n 2 pardiff bench comm
--device cuda --out comm.json``. Rank 0 and 1 play ping-pong through the traced Comm
(``send``/``recv`` exactly as the algorithms use them, so GPU tensors take the path the trace
records); a one-way time is half the median round trip. The JSON holds the times and the link
(α, β) fitted to them by least squares: a network FILE.json for ``pardiff simulate`` can be made
of it (docs/simulator.md).
"""
from __future__ import annotations

import platform
import statistics
import sys
import time

import numpy as np
import torch

from .comm.mpi import MPIComm
from .io import write_json
from .trace.recorder import Recorder


def fit_link(nbytes: list[int], seconds: list[float]) -> dict:
    """α + n/β through (bytes, seconds), least squares in relative error (so small messages,
    which fix α, weigh as much as large ones, which fix β); α ≥ 0."""
    n, s = np.asarray(nbytes, dtype=float), np.asarray(seconds, dtype=float)
    if len(n) < 2:
        raise ValueError("fitting a link needs two message sizes or more")
    (alpha, slope), *_ = np.linalg.lstsq(np.stack([1 / s, n / s], 1), np.ones_like(s), rcond=None)
    if alpha < 0:                       # latency below resolution: bandwidth alone, still relative
        alpha, slope = 0.0, float(np.sum(n / s) / np.sum((n / s) ** 2))
    return {"latency_s": float(alpha), "bandwidth_Bps": 1.0 / float(slope) if slope > 0 else float("inf")}


def bench_comm(sizes: list[int], device: str, repeats: int, out: str | None) -> int:
    comm = MPIComm()
    if comm.size < 2:
        sys.stderr.write("pardiff: error: bench comm needs at least 2 ranks (mpiexec -n 2 ...)\n")
        return 2
    comm.recorder = Recorder(comm.rank)
    if device == "cuda":
        if not torch.cuda.is_available():
            sys.stderr.write("pardiff: error: --device: cuda was asked for but torch sees no GPU\n")
            return 2
        dev = torch.device("cuda", comm.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    rows = []
    for n in sizes:
        buf = torch.zeros(max(n // 4, 1), dtype=torch.float32, device=dev)
        trips = []
        for i in range(repeats + 3):
            comm._barrier()
            t0 = time.perf_counter()
            if comm.rank == 0:
                comm.send(buf, 1, label="bench", line="bench")
                comm.recv(buf, 1, label="bench", line="bench")
            elif comm.rank == 1:
                comm.recv(buf, 0, label="bench", line="bench")
                comm.send(buf, 0, label="bench", line="bench")
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i >= 3:
                trips.append(time.perf_counter() - t0)
        rows.append({"nbytes": buf.numel() * 4, "one_way_s": statistics.median(trips) / 2,
                     "min_one_way_s": min(trips) / 2})
    if comm.rank == 0:
        path = "host" if dev.type == "cpu" else "staged"
        link = fit_link([r["nbytes"] for r in rows], [r["one_way_s"] for r in rows])
        device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.machine()})"
        result = {"format": "pardiff-bench-comm", "backend": comm.backend, "mpi": comm.library_version,
                  "path": path, "device": device_name, "ranks": comm.size, "local_size": comm.local_size,
                  "repeats": repeats, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                  "rows": rows, "fit": link}
        for r in rows:
            print(f"{r['nbytes']:>10d} B  one way {r['one_way_s'] * 1e6:10.1f} us  "
                  f"({r['nbytes'] / r['one_way_s'] / 1e9:.2f} GB/s)")
        print(f"fit: latency {link['latency_s'] * 1e6:.1f} us, bandwidth {link['bandwidth_Bps'] / 1e9:.2f} GB/s")
        if out:
            write_json(out, result)
    return 0
