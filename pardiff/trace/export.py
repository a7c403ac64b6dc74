"""Exports a trace to the Chrome trace-event format (opens in Perfetto and chrome://tracing)."""
from __future__ import annotations

import json

from .format import EVENT_DTYPE
from .reader import Trace
from .summary import ready_times

# Every field that is not already the event's name, category, start or duration.
ARG_FIELDS = tuple(n for n in EVENT_DTYPE.names if n not in ("kind", "label", "t_start", "t_end"))


def _us(seconds) -> float:
    """Seconds -> microseconds, the format's unit, rounded to the nanosecond."""
    return round(float(seconds) * 1e6, 3)


def _plain(value):
    """A root attribute as JSON can hold it."""
    return value if isinstance(value, (str, int, float, bool, dict, list)) or value is None else str(value)


def to_chrome(trace: Trace) -> dict:
    """The trace as a Chrome trace-event document.

    One process (pid 0) for the run, one thread per rank (tid = rank, named
    "rank r (host, device)"), one complete ("X") event per row with name = label,
    cat = kind and the other fields as args, and a flow ("s" in the send, "f" in the
    recv's transfer part) for every matched message, so the viewer draws an arrow.
    """
    events = [{"ph": "M", "name": "process_name", "pid": 0,
               "args": {"name": f"pardiff {trace.attrs.get('algorithm', '')}".strip()}}]
    for r in trace.ranks:
        ra = trace.rank_attrs.get(r, {})
        events.append({"ph": "M", "name": "thread_name", "pid": 0, "tid": r,
                       "args": {"name": f"rank {r} ({ra.get('host', '?')}, {ra.get('device', '?')})"}})
        events.append({"ph": "M", "name": "thread_sort_index", "pid": 0, "tid": r, "args": {"sort_index": r}})
        for row in trace.events[r]:
            events.append({"ph": "X", "name": str(row["label"]), "cat": str(row["kind"]), "pid": 0, "tid": r,
                           "ts": _us(row["t_start"]), "dur": _us(row["t_end"] - row["t_start"]),
                           "args": {f: row[f].item() for f in ARG_FIELDS}})

    # Flow events bind to the slice enclosing their ts ("bp": "e" asks the same of the
    # end, instead of the next slice to start), so each sits mid-slice, clear of the
    # neighbours that share the slice's edges: mid-send, and mid-transfer of the recv.
    ready = ready_times(trace)
    for flow_id, ((sr, si), (rr, ri)) in enumerate(trace.message_pairs()):
        send, recv = trace.events[sr][si], trace.events[rr][ri]
        name = str(send["label"])
        events.append({"ph": "s", "id": flow_id, "name": name, "cat": "message", "pid": 0, "tid": sr,
                       "ts": _us((send["t_start"] + send["t_end"]) / 2)})
        events.append({"ph": "f", "bp": "e", "id": flow_id, "name": name, "cat": "message", "pid": 0,
                       "tid": rr, "ts": _us((ready[rr][ri] + recv["t_end"]) / 2)})

    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {k: _plain(v) for k, v in trace.attrs.items()}}


def write_chrome(trace: Trace, path: str) -> str:
    """Write ``to_chrome(trace)`` as JSON to ``path`` and return the path."""
    with open(path, "w") as f:
        json.dump(to_chrome(trace), f)
    return str(path)
