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
from .config import RunConfig
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


class _PathRecorder(Recorder):
    """Keeps the paths the messages took (the trace's ``path``)."""

    def __init__(self, rank):
        super().__init__(rank)
        self.paths = set()

    def record(self, kind, label, line, t_start, t_end, **fields):
        self.paths.add(fields.get("path", ""))
        super().record(kind, label, line, t_start, t_end, **fields)


def _ping_pong(comm, send, recv, dev: torch.device, repeats: int) -> list[float]:
    """Round-trip times between ranks 0 and 1 (``send(dest)`` / ``recv(source)``), after 3
    untimed ones; the other ranks only take part in the barriers."""
    trips = []
    for i in range(repeats + 3):
        comm._barrier()
        t0 = time.perf_counter()
        if comm.rank == 0:
            send(1)
            recv(1)
        elif comm.rank == 1:
            recv(0)
            send(0)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if i >= 3:
            trips.append(time.perf_counter() - t0)
    return trips


def _reference_one_way(comm, transport: str, dev: torch.device, nbytes: int, repeats: int) -> tuple[str, float] | None:
    """What a path is measured against, one way, for ``nbytes``: NCCL's own send/recv ping-pong
    (torch.distributed, no Comm) for nccl; for host staging the pinned copies alone (GPU to host
    on the sender, host to GPU on the receiver: the bus's share of a staged message)."""
    if dev.type != "cuda":
        return None
    buf = torch.zeros(max(nbytes // 4, 1), dtype=torch.float32, device=dev)
    if transport == "nccl":
        import torch.distributed as dist
        trips = _ping_pong(comm, lambda peer: dist.send(buf, peer), lambda peer: dist.recv(buf, peer), dev, repeats)
        return "nccl send/recv (torch.distributed)", statistics.median(trips) / 2
    pinned = torch.empty(buf.shape, dtype=buf.dtype, pin_memory=True)
    copies = []
    for i in range(repeats + 3):
        torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        pinned.copy_(buf, non_blocking=True)
        torch.cuda.synchronize(dev)
        buf.copy_(pinned, non_blocking=True)
        torch.cuda.synchronize(dev)
        if i >= 3:
            copies.append(time.perf_counter() - t0)
    return "pinned copies GPU->host + host->GPU", statistics.median(copies)


def bench_comm(sizes: list[int], device: str, repeats: int, out: str | None, transport: str = "mpi",
               staging: str = "pinned", lane_mb: int = RunConfig.staging_lane_mb) -> int:
    comm = MPIComm()
    if comm.size < 2:
        sys.stderr.write("pardiff: error: bench comm needs at least 2 ranks (mpiexec -n 2 ...)\n")
        return 2
    if device == "cuda":
        if not torch.cuda.is_available():
            if comm.rank == 0:
                sys.stderr.write("pardiff: error: --device: cuda was asked for but torch sees no GPU\n")
            return 2
        dev = torch.device("cuda", comm.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if transport != "mpi":
        from .comm.torchdist import TorchDistComm
        comm = TorchDistComm(transport, dev if dev.type == "cuda" else None, mpi_comm=comm._c)
    from .runtime import agree, set_staging
    if agree(comm, set_staging(comm, staging, lane_mb)):
        return 2
    comm.recorder = _PathRecorder(comm.rank)
    rows = []
    for n in sizes:
        buf = torch.zeros(max(n // 4, 1), dtype=torch.float32, device=dev)
        trips = _ping_pong(comm, lambda peer: comm.send(buf, peer, label="bench", line="bench"),
                           lambda peer: comm.recv(buf, peer, label="bench", line="bench"), dev, repeats)
        row = {"nbytes": buf.numel() * 4, "one_way_s": statistics.median(trips) / 2, "min_one_way_s": min(trips) / 2}
        reference = _reference_one_way(comm, transport, dev, row["nbytes"], repeats)
        if reference:
            row["reference"], row["reference_one_way_s"] = reference
            row["ratio_to_reference"] = row["one_way_s"] / reference[1]
        rows.append(row)
    paths = sorted(comm.recorder.paths)
    if comm.rank == 0:
        # a link (latency + bytes / bandwidth) for pardiff simulate: it takes two sizes or more
        link = fit_link([r["nbytes"] for r in rows], [r["one_way_s"] for r in rows]) \
            if len({r["nbytes"] for r in rows}) > 1 else None
        device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.machine()})"
        result = {"format": "pardiff-bench-comm", "backend": comm.backend, "mpi": comm.library_version,
                  "path": ",".join(paths), "transport": transport, "staging": staging,
                  "staging_lane_mb": lane_mb if staging == "shared" else None, "device": device_name,
                  "ranks": comm.size, "local_size": comm.local_size, "repeats": repeats, "torch": torch.__version__,
                  "date": time.strftime("%Y-%m-%d"), "rows": rows, "fit": link}
        for r in rows:
            ref = (f"  {r['ratio_to_reference']:.2f}x {r['reference']} ({r['reference_one_way_s'] * 1e6:.1f} us)"
                   if "reference" in r else "")
            print(f"{r['nbytes']:>10d} B  one way {r['one_way_s'] * 1e6:10.1f} us  "
                  f"({r['nbytes'] / r['one_way_s'] / 1e9:.2f} GB/s){ref}")
        print(f"path {result['path']}; " + (f"fit: latency {link['latency_s'] * 1e6:.1f} us, bandwidth "
                                            f"{link['bandwidth_Bps'] / 1e9:.2f} GB/s" if link else
                                            "no link fit (one message size)"))
        if out:
            write_json(out, result)
    comm.close()
    return 0


def bench_tracing(cfg, repeats: int, results: str) -> int:
    """``pardiff bench tracing ALGO [run flags]``: the run's wall time with the trace file on and
    off, ``repeats`` times each, alternating (on, off, off, on, ...) in one job so drifts of the
    machine fall on both. On a GPU, "on" times compute and host spans with CUDA events, resolved
    without waiting for the GPU (trace/recorder.py), so both let the host run ahead. The model is
    loaded and warmed once, and one run is made and discarded before the timed ones; each run
    is a full ``runtime.run``, its wall time the algorithm's (as in --report)."""
    import dataclasses
    import json
    import os

    from .algorithms import ALGORITHMS
    from .runtime import run
    from .sim.execute import shared_loader

    comm = MPIComm()
    loader = shared_loader()           # one model load for every run of this rank

    stem = results[:-len(".json")]
    walls = {"on": [], "off": []}
    # one discarded run first: the process's first run pays one-time costs (imports, allocator, caches)
    for i in range(-1, repeats):
        for mode in (("off",) if i < 0 else ("on", "off") if i % 2 == 0 else ("off", "on")):
            run_cfg = dataclasses.replace(cfg, trace=f"{stem}-trace.h5" if mode == "on" else None,
                                          report=f"{stem}-{mode}.json")
            code = run(run_cfg, comm, ALGORITHMS[cfg.algorithm], loader=loader)
            if code:
                return code
            if comm.rank == 0 and i >= 0:
                with open(run_cfg.report, encoding="utf-8") as f:
                    walls[mode].append(json.load(f)["wall_s"])
    if comm.rank == 0:
        on, off = statistics.median(walls["on"]), statistics.median(walls["off"])
        # each repeat ran once on and once off, back to back: the median of the pairs' ratios is
        # less exposed to slow drifts of the machine than the ratio of the two medians
        paired = statistics.median(a / b for a, b in zip(walls["on"], walls["off"])) - 1
        with open(f"{stem}-on.json", encoding="utf-8") as f:
            last = json.load(f)
        result = {"format": "pardiff-bench-tracing", "algorithm": cfg.algorithm, "world_size": comm.size,
                  "params": cfg.to_dict(), "repeats": repeats, "wall_s_trace_on": walls["on"],
                  "wall_s_trace_off": walls["off"], "median_on_s": on, "median_off_s": off,
                  "overhead": on / off - 1, "overhead_paired": paired, "device": last["per_rank"][0]["device"], "versions": last["versions"],
                  "trace_bytes": os.path.getsize(f"{stem}-trace.h5"), "date": time.strftime("%Y-%m-%d")}
        write_json(results, result)
        print(f"{cfg.algorithm} on {comm.size} rank(s): trace off {off * 1e3:.1f} ms, on {on * 1e3:.1f} ms "
              f"(median of {repeats}): overhead {100 * (on / off - 1):+.2f} %, median of the pairs {100 * paired:+.2f} %, "
              f"spread off {1e3 * min(walls['off']):.1f}-{1e3 * max(walls['off']):.1f} ms")
    return 0
