"""Totals of a trace: per rank, per (rank, kind, label), for the run, and its critical path.

Time is split the same way everywhere: ``compute`` and ``host`` events count whole;
a ``send`` or ``collective`` counts whole as communication (a collective includes
waiting for the slowest rank); a ``recv`` is split at ``t_ready`` into waiting
(``t_ready - t_start``) and transfer (``t_end - t_ready``, communication). A receive
without a probe (NCCL, gloo: its ``t_ready`` is its start) is split where its send
began, if later (``ready_times``).
"""
from __future__ import annotations

import json
import textwrap
import numpy as np

from .reader import Trace

COMM_KINDS = ("send", "recv", "collective", "wait")
NO_PROBE = ("nccl", "gloo")                        # receive paths whose t_ready is their start
PATH_KINDS = ("compute", "host", "comm", "wait")   # how the critical path's seconds are split
TIE_S = 1e-9   # chains this close are equally long (float sums of the same span differ in the last bits)


def ready_times(trace: Trace) -> dict[int, np.ndarray]:
    """Rank -> when each row's own work began: ``t_ready`` for a recv, ``t_start`` for anything else.

    Clipped into [t_start, t_end] because files older than the ``t_ready`` field read it as -1.
    A receive without a probe (path ``nccl`` / ``gloo``: its ``t_ready`` is its start) is ready
    no earlier than its send began: the time before that it waited for the sender.
    """
    send_of = {recv: send for send, recv in trace.message_pairs()}
    out = {}
    for r, ev in trace.events.items():
        ready = np.where(ev["kind"] == "recv", np.clip(ev["t_ready"], ev["t_start"], ev["t_end"]), ev["t_start"])
        for i in np.flatnonzero((ev["kind"] == "recv") & np.isin(ev["path"], NO_PROBE)):
            send = send_of.get((r, int(i)))
            if send is not None:
                sent = trace.events[send[0]]["t_start"][send[1]]
                ready[i] = min(max(ready[i], sent), ev["t_end"][i])
        out[r] = ready
    return out


def run_span(trace: Trace) -> tuple[float, float]:
    """(first t_start, last t_end) over all ranks; (0, 0) for a trace without events."""
    nonempty = [ev for ev in trace.events.values() if len(ev)]
    if not nonempty:
        return 0.0, 0.0
    return (float(min(ev["t_start"].min() for ev in nonempty)),
            float(max(ev["t_end"].max() for ev in nonempty)))


def _rank_totals(ev: np.ndarray, ready: np.ndarray, run_wall: float) -> dict:
    kind, label = ev["kind"], ev["label"]
    wait, work = ready - ev["t_start"], ev["t_end"] - ready
    sent, received = kind == "send", kind == "recv"
    eps = (kind == "compute") & (label == "eps")
    totals = dict(
        wall_s=float(ev["t_end"].max() - ev["t_start"].min()) if len(ev) else 0.0,
        compute_s=float(work[kind == "compute"].sum()),
        host_s=float(work[kind == "host"].sum()),
        comm_s=float(work[np.isin(kind, COMM_KINDS)].sum()),
        collective_s=float(work[kind == "collective"].sum()),   # part of comm_s
        wait_s=float(wait.sum()),
    )
    busy = totals["compute_s"] + totals["host_s"] + totals["comm_s"] + totals["wait_s"]
    totals.update(
        idle_s=max(0.0, run_wall - busy),
        nfe=int(eps.sum()),
        nfe_samples=int(ev["batch"][eps].sum()),
        messages_sent=int(sent.sum()),
        bytes_sent=int(ev["nbytes"][sent].sum()),
        messages_received=int(received.sum()),
        bytes_received=int(ev["nbytes"][received].sum()),
    )
    return totals


def _label_totals(rank: int, ev: np.ndarray, ready: np.ndarray) -> list[dict]:
    wait = ready - ev["t_start"]
    rows = []
    for kind, label in sorted(set(zip(ev["kind"].tolist(), ev["label"].tolist()))):
        m = (ev["kind"] == kind) & (ev["label"] == label)
        rows.append(dict(rank=rank, kind=kind, label=label, count=int(m.sum()),
                         seconds=float((ev["t_end"] - ev["t_start"])[m].sum()),
                         wait_s=float(wait[m].sum()), bytes=int(ev["nbytes"][m].sum())))
    return rows


def critical_path(trace: Trace) -> dict:
    """The longest chain of events, measured in event durations.

    Edges: each rank's events in row order, and send -> recv for every matched
    message. A recv reached through its message counts only the time after the send
    had returned and the data was ready; the rest of it overlaps the sender's part of
    the chain. So the path never exceeds the wall time. Returns ``length_s``, its
    seconds per kind (``compute_s``, ``host_s``, ``comm_s``, ``wait_s``) and ``end_rank``.

    Rows are visited in dependency order (each rank runs on until a recv whose send is
    not visited yet), not by start time: a recv is often posted before its send starts,
    and this way no clock agreement between ranks is assumed.
    """
    send_of = {recv: send for send, recv in trace.message_pairs()}
    ready = ready_times(trace)
    # a row counts from the latest end among its rank's earlier rows: on a GPU rank traced
    # with CUDA events the host may receive while the GPU still computes (traces/SCHEMA.md)
    begin = {r: np.maximum(ev["t_start"], np.maximum.accumulate(np.concatenate([[-np.inf], ev["t_end"][:-1]])))
             for r, ev in trace.events.items()}
    best = {}                              # (rank, row) -> seconds per PATH_KINDS of the longest chain ending there
    pos = {r: 0 for r in trace.events}     # next row to visit on each rank
    left = sum(len(ev) for ev in trace.events.values())
    while left:
        progressed = False
        for r, ev in trace.events.items():
            while pos[r] < len(ev):
                i = pos[r]
                send = send_of.get((r, i))
                if send is not None and send not in best:
                    break                  # its sender has not got that far yet
                chain = list(best.get((r, i - 1), (0.0,) * 4))
                kind = ev["kind"][i]
                own = max(ready[r][i], begin[r][i])
                chain[{"compute": 0, "host": 1}.get(kind, 2)] += max(0.0, ev["t_end"][i] - own)
                chain[3] += max(0.0, ready[r][i] - begin[r][i])
                if send is not None:
                    s_rank, s_row = send
                    via = list(best[send])
                    send_end = trace.events[s_rank]["t_end"][s_row]
                    via[2] += max(0.0, ev["t_end"][i] - max(ready[r][i], send_end))
                    # a send that returned after its recv had ended (a rendezvous's last ack): the
                    # path reaches the recv's end, not the send's; its tail is not on the path
                    via[2] = max(0.0, via[2] - max(0.0, send_end - ev["t_end"][i]))
                    if sum(via) >= sum(chain) - TIE_S:   # on a tie the message is the cause of the wait
                        chain = via
                best[(r, i)] = tuple(float(x) for x in chain)
                pos[r] += 1
                left -= 1
                progressed = True
        if not progressed:
            # Only a damaged trace gets here (mismatched messages form a cycle): drop one edge.
            r = next(r for r, ev in trace.events.items() if pos[r] < len(ev))
            del send_of[(r, pos[r])]
    ends = [(sum(best[(r, len(ev) - 1)]), r) for r, ev in trace.events.items() if len(ev)]
    if not ends:
        return dict(length_s=0.0, compute_s=0.0, host_s=0.0, comm_s=0.0, wait_s=0.0, end_rank=-1)
    length, end_rank = max(ends)
    chain = best[(end_rank, len(trace.events[end_rank]) - 1)]
    return dict(length_s=length, **{f"{k}_s": v for k, v in zip(PATH_KINDS, chain)}, end_rank=end_rank)


def summarize(trace: Trace) -> dict:
    """Totals of a trace: ``run`` (the whole run), ``ranks`` (rank -> totals),
    ``labels`` (one row per rank, kind and label) and ``critical_path``.

    ``comm_s`` is send time, recv transfer time and collective time (``collective_s``
    repeats the last on its own); ``wait_s`` is recv waiting. A rank's ``wall_s`` is
    its own span (first start to last end); the run's is the span over all ranks, and
    a rank's ``idle_s`` is the run's span less its busy time.
    """
    t0, t1 = run_span(trace)
    wall = t1 - t0
    ready = ready_times(trace)
    ranks = {r: _rank_totals(trace.events[r], ready[r], wall) for r in trace.ranks}
    labels = [row for r in trace.ranks for row in _label_totals(r, trace.events[r], ready[r])]

    def total(key):
        return sum(v[key] for v in ranks.values())

    run = dict(algorithm=trace.attrs.get("algorithm", ""), world_size=trace.world_size,
               ranks_present=len(ranks), clock=trace.attrs.get("clock", ""),
               t_start=t0, t_end=t1, wall_s=wall,
               **{k: total(k) for k in ("compute_s", "host_s", "comm_s", "collective_s", "wait_s", "idle_s",
                                        "nfe", "nfe_samples")},
               messages=total("messages_sent"), bytes=total("bytes_sent"),
               messages_matched=len(trace.message_pairs()))
    return dict(run=run, ranks=ranks, labels=labels, critical_path=critical_path(trace))


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def _params_line(params) -> str:
    if not isinstance(params, dict):
        return str(params)
    items = []
    for key, value in params.items():
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
        items.append(f"{key}={text if len(text) <= 40 else text[:37] + '...'}")
    return " ".join(items)


def format_summary(trace: Trace, summary: dict | None = None) -> str:
    """A plain-text report of ``summarize(trace)``: header, a row per rank, a row per
    (rank, kind, label), and the critical path. Times in milliseconds."""
    s = summary or summarize(trace)
    run, cp = s["run"], s["critical_path"]
    attrs = trace.attrs
    out = [f"trace      {trace.path}",
           f"algorithm  {run['algorithm']}   world size {run['world_size']}"
           f" ({run['ranks_present']} ranks in trace)   clock {run['clock']}   backend {attrs.get('backend', '')}"]
    out += textwrap.wrap(_params_line(attrs.get("params", {})), width=100,
                         initial_indent="params     ", subsequent_indent=" " * 11)
    out.append(f"run        wall {_ms(run['wall_s'])} ms   nfe {run['nfe']} ({run['nfe_samples']} samples)"
               f"   messages {run['messages']} ({run['messages_matched']} matched, {run['bytes']} bytes)")
    out.append("")

    head = (f"{'rank':>4} {'wall_ms':>10} {'compute_ms':>11} {'host_ms':>10} {'comm_ms':>10} {'coll_ms':>10}"
            f" {'wait_ms':>10} {'idle_ms':>10} {'nfe':>6} {'samples':>7} {'sent':>6} {'bytes_sent':>12} {'recvd':>6}"
            f" {'bytes_recvd':>12}  where")
    out += [head, "-" * len(head)]
    for r, v in s["ranks"].items():
        ra = trace.rank_attrs.get(r, {})
        out.append(f"{r:>4} {_ms(v['wall_s']):>10} {_ms(v['compute_s']):>11} {_ms(v['host_s']):>10}"
                   f" {_ms(v['comm_s']):>10} {_ms(v['collective_s']):>10} {_ms(v['wait_s']):>10}"
                   f" {_ms(v['idle_s']):>10} {v['nfe']:>6} {v['nfe_samples']:>7}"
                   f" {v['messages_sent']:>6} {v['bytes_sent']:>12}"
                   f" {v['messages_received']:>6} {v['bytes_received']:>12}"
                   f"  {ra.get('host', '?')}/{ra.get('device', '?')}")
    out.append("")

    head = (f"{'rank':>4} {'kind':<10} {'label':<24} {'count':>7} {'total_ms':>11} {'mean_ms':>10}"
            f" {'wait_ms':>10} {'bytes':>12}")
    out += [head, "-" * len(head)]
    for row in s["labels"]:
        out.append(f"{row['rank']:>4} {row['kind']:<10} {row['label']:<24} {row['count']:>7}"
                   f" {_ms(row['seconds']):>11} {_ms(row['seconds'] / row['count']):>10}"
                   f" {_ms(row['wait_s']):>10} {row['bytes']:>12}")
    out.append("")

    length = cp["length_s"]

    def share(x):
        return f"{_ms(x)} ms ({100 * x / length:.1f}%)" if length > 0 else f"{_ms(x)} ms"

    of_wall = 100 * length / run["wall_s"] if run["wall_s"] > 0 else 0.0
    out.append(f"critical path {_ms(length)} ms ({of_wall:.1f}% of wall), ends on rank {cp['end_rank']}:"
               f" compute {share(cp['compute_s'])}, host {share(cp['host_s'])},"
               f" comm {share(cp['comm_s'])}, wait {share(cp['wait_s'])}")
    return "\n".join(out)
