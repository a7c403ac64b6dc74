"""Replay mode: re-time a recorded trace under another network or device profile.

A trace holds a run's dependency structure: each rank's events in order, every send matched
to its recv (MPI's non-overtaking rule), and every collective, the k-th on each rank being
one operation. Replay walks that structure and gives every event a new start and end by the
rules the virtual Comm uses when it executes (comm/virtual.py), so replaying a simulated
trace under its own network and profile reproduces it exactly:

- the time between an event of a rank and the latest end among its earlier events (untraced
  host work) is kept as recorded, also when it is negative: on a GPU rank traced with CUDA
  events the host can receive while the GPU still computes, and that overlap is kept; but a
  send, collective or wait of GPU data, and a receive into GPU memory over ``cuda-aware`` or
  ``nccl``, never starts before the rank's earlier compute and host events end (their
  transports wait for the GPU: the bytes must exist); messages of CPU tensors (path ``host``)
  keep their recorded place;
- ``compute``: the profile's time for its batch size (its first-evaluation time the first
  time the rank meets that size), or the recorded duration without a profile;
  ``host``: the recorded duration;
- ``send``: occupies the sender for the link's α + n/β; the message arrives when it ends;
  a non-blocking one (``Comm.isend``: a later ``wait`` row has its peer, tag and seq) frees the
  sender at once, and its ``wait`` ends at max(its start, the message's arrival);
- ``recv``: ends at max(its start, the message's arrival);
- ``collective``: ends on every rank at max(entry times) + the network's price for it.

``network=None`` (``--network recorded``) keeps every message's and collective's recorded
cost instead: a send lasts as long as it did, its message arrives as long after the send
began as it did, a recv's transfer after arrival lasts as long as it did, and a collective
costs each rank what it took it after the last rank arrived. Replaying a real trace that way reproduces
its timings, up to how well the ranks' clocks were aligned.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..io import write_json
from ..trace.reader import Trace, load_trace
from ..trace.recorder import GPU_TIMED
from ..trace.summary import ready_times, summarize
from ..trace.writer import write_trace


GPU_WAITING = ("cuda-aware", "nccl")          # receive paths that wait for the GPU's earlier work
HOST_PATHS = ("host", "gloo")                 # messages of CPU tensors: they need nothing from the GPU


def waits_for_gpu(row) -> bool:
    """Whether a trace row cannot start before its rank's earlier GPU work ends: a send, wait or
    collective of GPU data (it needs the bytes), or a receive whose transport writes GPU memory
    in stream order. Messages of CPU tensors (a seed, the stopping rule's residual) and barriers
    do not."""
    kind, path = row["kind"], str(row["path"])
    if kind == "recv":
        return path in GPU_WAITING
    if kind == "collective" and path == "":
        return False                                  # a barrier moves no data
    return kind in ("send", "wait", "collective") and path not in HOST_PATHS


def on_gpu_clock(row, timing: str) -> bool:
    """Whether the row was timed on the GPU's stream (CUDA events) rather than the host clock."""
    return timing == "cuda-events" and (row["kind"] in GPU_TIMED or str(row["path"]) == "nccl")


class ReplayError(ValueError):
    pass


def collective_cost(network, size: int, row) -> float:
    """The network's price of one collective trace row: a broadcast names its root in ``peer``;
    anything else (allreduce, barrier) is priced as a ring allreduce of its bytes."""
    if row["peer"] >= 0:
        return network.bcast(size, int(row["peer"]), int(row["nbytes"]))
    return network.allreduce(size, int(row["nbytes"]))


def retime(trace: Trace, network=None, profile=None) -> dict[int, np.ndarray]:
    """New event tables (copies of the trace's, times replaced), rank -> rows."""
    size = trace.world_size
    if sorted(trace.events) != list(range(size)):
        raise ReplayError(f"{trace.path}: holds ranks {trace.ranks} of a world of {size}: "
                          "replay needs every rank's events (merge the parts of a crashed run first)")
    old = trace.events
    new = {r: ev.copy() for r, ev in old.items()}
    pairs = trace.message_pairs()
    send_of = {recv: send for send, recv in pairs}
    recv_of = {send: recv for send, recv in pairs}
    arrival = {}                               # (sender, row) -> when its message is there
    coll_rows = {r: np.flatnonzero(ev["kind"] == "collective") for r, ev in old.items()}
    entries = defaultdict(dict)                # k-th collective -> {rank: entry time}
    done = {}                                  # k-th collective -> end time
    n_coll = {r: 0 for r in old}               # collectives each rank has passed
    clock = {r: 0.0 for r in old}
    params = trace.attrs.get("params") if isinstance(trace.attrs.get("params"), dict) else {}
    eval_batch = int(params.get("eval_batch") or 0)     # --eval-batch: evaluations in pieces (older traces: none)
    # batch sizes each rank evaluated before its clock started (older traces: --batch alone)
    seen = {}
    for r in old:
        warm = [int(b) for b in np.atleast_1d(trace.rank_attrs.get(r, {}).get("warm_batches", []))]
        seen[r] = set(warm or [int(params.get("batch", 1))])
    # a non-blocking send (Comm.isend) is a send row and, later, a wait row with its peer, tag and seq
    send_row = {(r, int(e["peer"]), int(e["tag"]), int(e["seq"])): i for r, ev in old.items()
                for i, e in enumerate(ev) if e["kind"] == "send"}
    waited = {r: {send_row[(r, int(e["peer"]), int(e["tag"]), int(e["seq"]))] for e in ev if e["kind"] == "wait"}
              for r, ev in old.items()}
    prev_end = {r: 0.0 for r in old}           # latest recorded end among the rank's events so far
    # new start of the rank's previous event on the same clock: a GPU-timed rank's rows are in
    # order on the stream and, apart, on the host, but the host runs ahead of the stream
    last_start = {(r, gpu): 0.0 for r in old for gpu in (False, True)}
    timing = {r: str(trace.rank_attrs.get(r, {}).get("timing", "")) for r in old}
    ready_at = ready_times(trace)              # when each recorded recv's message was there
    gpu_end = {r: 0.0 for r in old}            # new end of the rank's latest compute / host event
    pos = {r: 0 for r in old}
    left = sum(len(ev) for ev in old.values())
    while left:
        progressed = False
        for r, ev in old.items():
            while pos[r] < len(ev):
                i = pos[r]
                row, kind = ev[i], ev["kind"][i]
                line = (r, on_gpu_clock(row, timing[r]))
                # never before the previous event's (new) start on the same clock: rows keep their order
                start = max(last_start[line], clock[r] + (float(row["t_start"]) - prev_end[r]))
                if waits_for_gpu(row):
                    start = max(start, gpu_end[r])
                ready = start
                if kind == "recv":
                    send = send_of.get((r, i))
                    if send is None:
                        raise ReplayError(f"{trace.path}: rank {r} row {i}: a recv from rank {row['peer']} "
                                          f"(tag {row['tag']}) with no matching send")
                    if send not in arrival:
                        break                                      # its sender has not got there yet
                    ready = max(start, arrival[send])
                    end = ready + (0.0 if network else float(row["t_end"] - ready_at[r][i]))
                elif kind == "collective":
                    k = n_coll[r]
                    entries[k].setdefault(r, start)
                    if len(entries[k]) < size:
                        break                                      # the others have not arrived
                    rows = [old[q][coll_rows[q][k]] for q in range(size)]
                    if k not in done:
                        done[k] = max(entries[k].values())
                    end = done[k] + _collective_cost(rows, r, size, network)
                    n_coll[r] += 1
                elif kind == "wait":
                    sent = (r, send_row[(r, int(row["peer"]), int(row["tag"]), int(row["seq"]))])
                    end = max(start, arrival[sent]) if network else start + float(row["t_end"] - row["t_start"])
                elif kind == "send":
                    if network:
                        end = start + network.message(r, int(row["peer"]), int(row["nbytes"]))
                        arrival[(r, i)] = end
                        if i in waited[r]:
                            end = start                    # posted: the sender goes on, its wait row waits
                    else:
                        end = start + float(row["t_end"] - row["t_start"])
                        recv = recv_of.get((r, i))
                        latency = 0.0
                        if recv is not None:
                            latency = max(0.0, float(ready_at[recv[0]][recv[1]] - row["t_start"]))
                        arrival[(r, i)] = start + latency
                elif kind == "compute" and profile is not None:
                    end = start + profile.charge(seen[r], int(row["batch"]), eval_batch)
                else:
                    end = start + float(row["t_end"] - row["t_start"])
                new[r]["t_start"][i], new[r]["t_ready"][i], new[r]["t_end"][i] = start, ready, end
                clock[r], prev_end[r] = max(clock[r], end), max(prev_end[r], float(row["t_end"]))
                if kind in ("compute", "host"):
                    gpu_end[r] = max(gpu_end[r], end)
                last_start[line] = start
                pos[r] += 1
                left -= 1
                progressed = True
        if not progressed:
            stuck = {r: pos[r] for r, ev in old.items() if pos[r] < len(ev)}
            raise ReplayError(f"{trace.path}: the ranks wait on each other (rank: next row {stuck}); "
                              "the trace's messages or collectives do not match")
    return new


def _collective_cost(rows, rank: int, size: int, network) -> float:
    """Price of one collective (its row on each rank) for ``rank``: the network's, or what it took
    that rank once the last rank had arrived."""
    if network:
        return collective_cost(network, size, rows[0])
    return max(0.0, float(rows[rank]["t_end"]) - max(float(x["t_start"]) for x in rows))


def replay(path: str, network=None, profile=None, trace_out: str | None = None,
           report_out: str | None = None) -> int:
    """``pardiff simulate --replay``: re-time ``path``, print and write the predicted totals."""
    trace = load_trace(path)
    if profile is not None:
        params = trace.attrs.get("params", {})
        if isinstance(params, dict) and params.get("model") not in (None, profile.model):
            raise ReplayError(f"the profile was measured for --model {profile.model}, the trace ran "
                              f"--model {params.get('model')}")
    events = retime(trace, network, profile)
    attrs = dict(trace.attrs, clock="virtual", replayed_from=path,
                 network=network.to_dict() if network else "recorded",
                 profile=profile.to_dict() if profile else "recorded")
    attrs.pop("format", None)
    attrs.pop("version", None)
    replayed = Trace(path=trace_out or path, attrs=attrs, events=events, rank_attrs=trace.rank_attrs)
    if trace_out:
        write_trace(trace_out, attrs, events, trace.rank_attrs)
    report = replay_report(trace, summarize(replayed), summarize(trace)["run"]["wall_s"], network, profile)
    print(f"replayed {path} ({report['algorithm']} on {trace.world_size} ranks) under network "
          f"{network.name if network else 'recorded'}, profile {profile.device if profile else 'recorded'}: "
          f"wall {report['wall_s'] * 1e3:.3f} ms (recorded {report['recorded_wall_s'] * 1e3:.3f} ms)")
    if report_out:
        write_json(report_out, report)
    return 0


def replay_report(trace: Trace, summary: dict, recorded_wall_s: float, network, profile) -> dict:
    """The predicted run: wall time, per-rank compute / communication / idle, NFE and iterations."""
    params = trace.attrs.get("params", {}) if isinstance(trace.attrs.get("params"), dict) else {}
    batch = max(int(params.get("batch", 1)), 1)
    iters = [int(ev["iter"].max()) for ev in trace.events.values() if len(ev) and ev["iter"].max() >= 0]
    run = summary["run"]
    report = {"mode": "replay", "replayed_from": trace.path, "algorithm": run["algorithm"],
              "world_size": run["world_size"], "wall_s": run["wall_s"],
              "recorded_wall_s": recorded_wall_s,
              "nfe": run["nfe_samples"] // batch, "model_calls": run["nfe"],
              "network": network.to_dict() if network else "recorded",
              "profile": profile.to_dict() if profile else "recorded",
              "per_rank": [{"rank": r, "compute_s": v["compute_s"] + v["host_s"], "communication_s": v["comm_s"],
                            "waiting_s": v["wait_s"], "idle_s": v["idle_s"], "wall_s": v["wall_s"]}
                           for r, v in summary["ranks"].items()],
              "critical_path": summary["critical_path"], "params": params}
    if iters:
        report["iterations"] = max(iters) + 1
    return report
