"""Writes a rank's events to its own HDF5 part file, incrementally; merges parts.

HDF5 from PyPI has no parallel (MPI-IO) build, so ranks never share a file while
running: rank r appends to ``<trace>.parts/rank<r>.h5`` (flushed every
``FLUSH_ROWS`` rows, or once a row has waited ``FLUSH_SECONDS``), and at the end rank 0 copies every part
into the one trace file. A crashed run leaves its parts behind, each a valid
trace holding its rank's flushed rows; ``pardiff trace merge`` assembles them.
"""
from __future__ import annotations

import json
import os
import shutil
import time

import h5py
import numpy as np

from .format import EVENT_DTYPE, FORMAT, VERSION, parts_dir

FLUSH_ROWS = 256
FLUSH_SECONDS = 1.0


def write_root_attrs(f: h5py.File, attrs: dict) -> None:
    f.attrs["format"] = FORMAT
    f.attrs["version"] = VERSION
    for key, value in attrs.items():
        f.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value


class PartWriter:
    """Appends one rank's event rows to ``<trace>.parts/rank<r>.h5``."""

    def __init__(self, trace_path: str, rank: int, root_attrs: dict, rank_attrs: dict):
        os.makedirs(parts_dir(trace_path), exist_ok=True)
        self.path = os.path.join(parts_dir(trace_path), f"rank{rank}.h5")
        self._file = h5py.File(self.path, "w")
        write_root_attrs(self._file, root_attrs)
        group = self._file.create_group(f"ranks/{rank}")
        for key, value in rank_attrs.items():
            group.attrs[key] = value
        self._events = group.create_dataset("events", shape=(0,), maxshape=(None,),
                                            dtype=EVENT_DTYPE, chunks=(256,),
                                            compression="gzip", shuffle=True)
        self._file.flush()
        self._rows: list[tuple] = []
        self._oldest = 0.0           # when the oldest buffered row arrived

    def append(self, row: tuple) -> None:
        if not self._rows:
            self._oldest = time.monotonic()
        self._rows.append(row)
        if len(self._rows) >= FLUSH_ROWS or time.monotonic() - self._oldest > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self._file is None:
            return
        if self._rows:
            rows = np.array(self._rows, dtype=EVENT_DTYPE)
            n = self._events.shape[0]
            self._events.resize((n + len(rows),))
            self._events[n:] = rows
            self._rows.clear()
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None


def merge_parts(trace_path: str, world_size: int | None = None, root_attrs: dict | None = None) -> list[int]:
    """Copy every ``rank<r>.h5`` under ``<trace>.parts`` into ``trace_path``; remove the parts.

    Returns the ranks merged. Root attributes come from ``root_attrs`` or, for a
    crashed run, from the first part. Missing parts are allowed (that rank never
    wrote anything) but reported by the caller through the returned list.
    """
    src_dir = parts_dir(trace_path)
    names = sorted((n for n in os.listdir(src_dir) if n.startswith("rank") and n.endswith(".h5")),
                   key=lambda n: int(n[4:-3]))
    if not names:
        raise FileNotFoundError(f"no rank part files in {src_dir}")
    tmp = trace_path + ".tmp"
    merged = []
    with h5py.File(tmp, "w") as dst:
        for name in names:
            with h5py.File(os.path.join(src_dir, name), "r", locking=False) as src:
                if not merged:
                    attrs = dict(src.attrs) if root_attrs is None else root_attrs
                    write_root_attrs(dst, {k: v for k, v in attrs.items() if k not in ("format", "version")})
                for r in src["ranks"]:
                    src.copy(src[f"ranks/{r}"], dst.require_group("ranks"), name=r)
                    merged.append(int(r))
        if world_size is not None:
            dst.attrs["world_size"] = world_size
    os.replace(tmp, trace_path)
    shutil.rmtree(src_dir)
    return sorted(merged)


def write_trace(trace_path: str, root_attrs: dict, events: dict, rank_attrs: dict | None = None) -> None:
    """Write a whole trace at once (rank -> event rows, string fields as str or bytes): the
    simulator's replay output. Same layout as a merged run."""
    tmp = trace_path + ".tmp"
    with h5py.File(tmp, "w") as f:
        write_root_attrs(f, {k: v for k, v in root_attrs.items() if k not in ("format", "version")})
        for r, ev in sorted(events.items()):
            rows = np.zeros(len(ev), dtype=EVENT_DTYPE)
            for name in EVENT_DTYPE.names:
                rows[name] = np.char.encode(ev[name]) if ev.dtype[name].kind == "U" else ev[name]
            group = f.create_group(f"ranks/{r}")
            for key, value in (rank_attrs or {}).get(r, {}).items():
                group.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value
            group.create_dataset("events", data=rows, maxshape=(None,), chunks=(256,) if len(rows) else None,
                                 compression="gzip", shuffle=True)
    os.replace(tmp, trace_path)
