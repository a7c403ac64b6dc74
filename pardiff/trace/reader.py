"""Reads a trace (a merged file, or the ``.parts`` folder a crashed run left)."""
from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field

import h5py
import numpy as np

from .format import EVENT_DTYPE, FORMAT, STRING_FIELDS, parts_dir


@dataclass
class Trace:
    path: str
    attrs: dict                                   # root attributes, JSON ones decoded
    events: dict[int, np.ndarray]                 # rank -> structured array (strings decoded to str)
    rank_attrs: dict[int, dict] = field(default_factory=dict)
    _pairs: list | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def world_size(self) -> int:
        return int(self.attrs.get("world_size", len(self.events)))

    @property
    def ranks(self) -> list[int]:
        return sorted(self.events)

    def message_pairs(self) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """Every matched message as ((sender, send row), (receiver, recv row)), rows as indices.

        Sends match recvs by (sender, receiver, tag) in order: MPI's non-overtaking rule.
        Matched once per trace (the summary, replay and plots all ask): a trace's events do not
        change once it is loaded.
        """
        if self._pairs is None:
            sends, recvs = defaultdict(list), defaultdict(list)
            for r, ev in self.events.items():
                for i in np.flatnonzero(ev["kind"] == "send"):
                    sends[(r, int(ev["peer"][i]), int(ev["tag"][i]))].append((r, int(i)))
                for i in np.flatnonzero(ev["kind"] == "recv"):
                    recvs[(int(ev["peer"][i]), r, int(ev["tag"][i]))].append((r, int(i)))
            self._pairs = [pair for key in sends for pair in zip(sends[key], recvs.get(key, []))]
        return self._pairs

    def messages(self) -> list[tuple[np.void, np.void]]:
        """Every matched message as (send row, recv row)."""
        return [(self.events[sr][si], self.events[rr][ri]) for (sr, si), (rr, ri) in self.message_pairs()]


def _decode_attr(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode_events(raw: np.ndarray) -> np.ndarray:
    """Fixed-width bytes -> str, and any field an older file lacks -> its default."""
    dtype = [(n, "U24" if n in STRING_FIELDS else EVENT_DTYPE[n]) for n in EVENT_DTYPE.names]
    out = np.zeros(len(raw), dtype=dtype)
    for name in EVENT_DTYPE.names:
        if name in raw.dtype.names:
            out[name] = np.char.decode(raw[name]) if name in STRING_FIELDS else raw[name]
        elif name not in STRING_FIELDS:
            out[name] = -1
    return out


def _read_file(path: str, trace: Trace) -> None:
    if not h5py.is_hdf5(path):
        raise ValueError(f"{path} is not a pardiff trace (not an HDF5 file)")
    with h5py.File(path, "r", locking=False) as f:   # a killed run may still hold its lock
        if f.attrs.get("format") not in (FORMAT, FORMAT.encode()):
            raise ValueError(f"{path} is not a pardiff trace (format attribute missing)")
        if not trace.attrs:
            trace.attrs = {k: _decode_attr(v) for k, v in f.attrs.items()}
        for r, group in f["ranks"].items():
            trace.events[int(r)] = _decode_events(group["events"][()])
            trace.rank_attrs[int(r)] = {k: _decode_attr(v) for k, v in group.attrs.items()}


def load_trace(path: str) -> Trace:
    """Load a trace file, or, when only ``<path>.parts`` exists, the parts a crashed run left."""
    trace = Trace(path=str(path), attrs={}, events={})
    if os.path.isfile(path):
        _read_file(path, trace)
    elif os.path.isdir(parts_dir(path)) or os.path.isdir(path):
        folder = parts_dir(path) if os.path.isdir(parts_dir(path)) else path
        names = [n for n in os.listdir(folder) if n.startswith("rank") and n.endswith(".h5")]
        if not names:
            raise FileNotFoundError(f"no trace at {path} and no rank parts in {folder}")
        for name in sorted(names):
            _read_file(os.path.join(folder, name), trace)
    else:
        raise FileNotFoundError(f"no trace file {path}")
    return trace
