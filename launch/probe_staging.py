#!/usr/bin/env python3
"""Where a host-staged GPU message's time goes, on one GPU and one rank.

On two H200s a pinned-staged 786 KB message took 198 us one way, against 52.5 us for the two
pinned copies and 98.7 us for Open MPI's host-to-host transfer (traces/results/2026-11-24_h200x2_perf):
~47 us were neither. Two ranks sharing one GPU cannot tell where they go (the GPU switches
between their contexts on every copy), so this probe takes a message apart inside one process,
which sends to itself through MPI's self transport:

    mpirun -n 1 python3 launch/probe_staging.py --out staging.json
    python3 launch/probe_staging.py --summarize DIR     # medians over DIR/staging_<version>_<rep>.json

One message per call, each call timed between two device synchronisations; the variants take
turns in rounds (so drift of the machine hits them alike); each row is the median per call:

    copies           pinned GPU->host copy, sync, host->GPU copy (bench comm's reference)
    mpi host         Isend to self + Probe + Recv + Wait between two pageable host buffers
    mpi pinned       the same between two pinned buffers the GPU does not touch
    raw staged       copy GPU->pinned A, sync, MPI A -> pinned B, copy B->GPU: a staged message
                     with nothing of pardiff in it
    comm cpu         Comm.isend + Comm.recv + wait of CPU tensors (Comm and its recorder, MPI)
    comm gpu         the same of GPU tensors: pardiff's pinned path end to end

and "mpi host" and "comm cpu" once more back to back, without synchronisations (", no sync").

``comm gpu - raw staged`` is what pardiff adds to a staged message; ``raw staged - copies -
mpi host`` what staging costs MPI beyond a host-to-host transfer between warm buffers. Then the
price of single Python/torch calls the pinned path makes (no synchronisation), and a cProfile of
the 786 KB ``comm gpu`` loop. It needs of pardiff only ``Comm.isend`` / ``recv`` and the comm's
pinned pool (since commit 65ffd7a), so it times older versions too: run it from an older
version's folder with that folder on PYTHONPATH.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time
from pathlib import Path

import torch


def call_us(fn, calls: int = 20000) -> float:
    """Mean host time of one call of ``fn`` (no synchronisation)."""
    for _ in range(100):
        fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def summarize(folder: str) -> int:
    """Median and range per size and column over runs saved as FOLDER/staging_<version>_<rep>.json
    (versions alternating in one job), and each version's median ratio to the baseline's run of
    the same rep, where both are positive. The baseline is the version named "old" if there is
    one, else the first by name."""
    runs = {}
    for path in sorted(Path(folder).glob("staging_*_*.json")):
        version, rep = path.stem[len("staging_"):].rsplit("_", 1)
        rows = json.loads(path.read_text())["rows"]
        runs.setdefault(version, {})[int(rep)] = {row["nbytes"]: row for row in rows}
    if not runs:
        raise SystemExit(f"--summarize: no staging_<version>_<rep>.json in {folder}")
    versions = sorted(runs, key=lambda v: (v != "old", v))
    base = runs[versions[0]]
    for nbytes in sorted({n for reps in runs.values() for rows in reps.values() for n in rows}):
        print(f"\n{nbytes} B, median over runs [min-max], median ratio to {versions[0]} (same rep)")
        columns = dict.fromkeys(k for reps in runs.values() for rows in reps.values()     # in row order
                                for k in rows.get(nbytes, {}) if k.endswith(" us"))
        for column in columns:
            cells = []
            for version in versions:
                values = {rep: rows[nbytes][column] for rep, rows in runs[version].items()
                          if column in rows.get(nbytes, {})}
                if not values:
                    cells.append(f"{version} -")
                    continue
                cell = (f"{version} {statistics.median(values.values()):7.1f} "
                        f"[{min(values.values()):.1f}-{max(values.values()):.1f}]")
                pairs = [(value, base[rep][nbytes][column]) for rep, value in values.items()
                         if column in base.get(rep, {}).get(nbytes, {})]
                if runs[version] is not base and pairs and all(a > 0 and b > 0 for a, b in pairs):
                    cell += f" x{statistics.median(a / b for a, b in pairs):.2f}"
                cells.append(cell)
            print(f"  {column:42s} " + "   ".join(cells))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="8,65536,786432,8388608", help="message sizes in bytes")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--per-round", type=int, default=20, help="messages per variant and round")
    ap.add_argument("--out", help="the JSON to write (required unless --summarize)")
    ap.add_argument("--summarize", metavar="DIR", help="print the medians of saved runs instead of measuring")
    args = ap.parse_args()
    if args.summarize:
        return summarize(args.summarize)
    if not args.out:
        ap.error("--out is required")

    from mpi4py import MPI

    from pardiff.comm.mpi import MPIComm
    from pardiff.io import write_json

    comm = MPIComm()
    if comm.size != 1:
        raise SystemExit("probe_staging.py runs on one rank (mpirun -n 1)")
    if not torch.cuda.is_available():
        raise SystemExit("probe_staging.py needs a GPU")
    if comm.cuda_aware:     # Comm would hand MPI the GPU pointers: no staging to take apart
        raise SystemExit("probe_staging.py: this MPI is CUDA-aware (or PARDIFF_CUDA_AWARE_MPI=1): "
                         "GPU tensors are not staged")
    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)

    def sync():
        torch.cuda.synchronize(dev)

    def mpi_self(a, b):
        request = comm._c.Isend([a, MPI.BYTE], dest=0, tag=7)
        comm._c.Probe(source=0, tag=7)
        comm._c.Recv([b, MPI.BYTE], source=0, tag=7)
        request.Wait()

    rows = []
    for nbytes in [int(s) for s in args.sizes.split(",")]:
        n = max(nbytes // 4, 1)
        host_a, host_b = torch.zeros(n), torch.zeros(n)
        pin_a, pin_b = torch.zeros(n, pin_memory=True), torch.zeros(n, pin_memory=True)
        src, dst = torch.zeros(n, device=dev), torch.zeros(n, device=dev)
        np_host = (host_a.numpy().view("u1"), host_b.numpy().view("u1"))
        np_pin = (pin_a.numpy().view("u1"), pin_b.numpy().view("u1"))

        def copies():
            pin_a.copy_(src, non_blocking=True)
            sync()
            dst.copy_(pin_b, non_blocking=True)

        def raw_staged():
            pin_a.copy_(src, non_blocking=True)
            sync()
            mpi_self(*np_pin)
            dst.copy_(pin_b, non_blocking=True)

        def comm_self(x, y):
            pending = comm.isend(x, 0, label="bench", line="bench")
            comm.recv(y, 0, label="bench", line="bench")
            pending.wait()

        variants = {"copies": copies, "mpi host": lambda: mpi_self(*np_host),
                    "mpi pinned": lambda: mpi_self(*np_pin), "raw staged": raw_staged,
                    "comm cpu": lambda: comm_self(host_a, host_b), "comm gpu": lambda: comm_self(src, dst)}
        times = {name: [] for name in variants}
        for r in range(args.rounds + 1):
            for name, fn in variants.items():
                for _ in range(args.per_round):
                    sync()
                    t0 = time.perf_counter()
                    fn()
                    sync()
                    if r:                       # round 0 warms every variant up
                        times[name].append(time.perf_counter() - t0)
        row = {"nbytes": n * 4}
        row.update({f"{name} us": statistics.median(t) * 1e6 for name, t in times.items()})
        row["pardiff beyond raw staged us"] = row["comm gpu us"] - row["raw staged us"]
        row["staged mpi beyond copies and host mpi us"] = row["raw staged us"] - row["copies us"] - row["mpi host us"]
        # host messages again, back to back without the device synchronisations around each call
        # (those cost microseconds themselves and disturb the caches): what Comm adds to MPI
        for name, fn in (("mpi host, no sync us", variants["mpi host"]), ("comm cpu, no sync us", variants["comm cpu"])):
            row[name] = statistics.median(call_us(fn, 400) for _ in range(5))
        row["comm beyond mpi, host, no sync us"] = row["comm cpu, no sync us"] - row["mpi host, no sync us"]
        if nbytes == 786432:
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(300):
                comm_self(src, dst)
                sync()
            profile.disable()
            text = io.StringIO()
            pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(25)
            row["profile"] = text.getvalue()
        rows.append(row)
        print({k: round(v, 1) for k, v in row.items() if k != "profile"}, flush=True)

    # what the pinned path's single calls cost this host (no synchronisation among them)
    gpu_t, pin = torch.zeros(196608, device=dev), torch.zeros(196608 * 4, dtype=torch.uint8, pin_memory=True)
    calls = {
        "torch.cuda.current_stream(device)": lambda: torch.cuda.current_stream(dev),
        "torch.cuda.current_stream()": lambda: torch.cuda.current_stream(),
        "torch.cuda.Event()": lambda: torch.cuda.Event(),
        "Event() + record()": lambda: torch.cuda.Event().record(),
        "pinned.view(dtype).view(shape)": lambda: pin.view(gpu_t.dtype).view(gpu_t.shape),
        "pinned.numpy()": lambda: pin.numpy(),
        "comm.pinned.acquire + release": lambda: comm.pinned.release(comm.pinned.acquire(786432)),
        "MPI.Status()": lambda: MPI.Status(),
        "recorder.mark()": lambda: comm.recorder.mark(),
        "time.perf_counter()": time.perf_counter,
    }
    call_costs = {name: call_us(fn) for name, fn in calls.items()}
    for name, us in call_costs.items():
        print(f"{us:8.2f} us  {name}")
    result = {"format": "pardiff-probe-staging", "device": torch.cuda.get_device_name(dev),
              "mpi": comm.library_version, "torch": torch.__version__, "rounds": args.rounds,
              "per_round": args.per_round, "date": time.strftime("%Y-%m-%d"), "rows": rows,
              "call_us": call_costs}
    write_json(args.out, result)
    for row in rows:
        if "profile" in row:
            print(row["profile"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
