"""Trace tools (summary, plot, Chrome export) on small synthetic traces with known times.

Times are multiples of U = 2**-10 s, so every sum below is exact in floating point.
"""
import json
import os

import numpy as np
import pytest

from pardiff.trace.export import to_chrome, write_chrome
from pardiff.trace.format import parts_dir
from pardiff.trace.plot import plot_timeline
from pardiff.trace.reader import load_trace
from pardiff.trace.recorder import Recorder
from pardiff.trace.summary import format_summary, summarize
from pardiff.trace.writer import PartWriter, merge_parts

U = 2.0 ** -10
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def approx(units):
    return pytest.approx(units * U, abs=1e-12)


def write_trace(path, ranks, merge=True, algorithm="se2p", timing=None):
    """ranks: {rank: [(kind, label, start, end, fields), ...]} with times in units of U;
    ``timing``: the ranks' timing attribute (``cuda-events``: rows as a GPU rank records them)."""
    root = dict(algorithm=algorithm, world_size=len(ranks), clock="virtual", backend="virtual",
                params={"steps": 2, "model": "gmm", "schedule": {"name": "linear", "T": 1000}},
                versions={"pardiff": "0.1.0"}, epoch_unix=1.7e9)
    for r, rows in ranks.items():
        writer = PartWriter(str(path), r, root, dict(host=f"node{r}", device=f"cuda:{r}",
                                                     clock_offset_s=0.0, clock_rtt_s=0.0,
                                                     **({"timing": timing} if timing else {})))
        rec = Recorder(r, writer=writer)
        for kind, label, start, end, fields in rows:
            if "t_ready" in fields:
                fields = dict(fields, t_ready=fields["t_ready"] * U)
            rec.record(kind, label, "SE2P-A1:1", start * U, end * U, **fields)
        rec.close()
    if merge:
        merge_parts(str(path))
    return load_trace(str(path))


# Rank 0 evaluates eps, sends x_pred to rank 1 (which waited for it), waits for the latent back.
PING_PONG = {
    0: [("compute", "eps", 0, 10, dict(t=999, batch=1)),
        ("host", "x_pred", 10, 11, {}),
        ("send", "x_pred", 11, 12, dict(peer=1, tag=1, seq=0, nbytes=1000, path="host")),
        ("recv", "latent", 12, 30, dict(peer=1, tag=2, seq=0, nbytes=2000, path="host", t_ready=27.5)),
        ("host", "integrate", 30, 31, {})],
    1: [("recv", "x_pred", 0, 13, dict(peer=0, tag=1, seq=0, nbytes=1000, path="host", t_ready=11.5)),
        ("compute", "eps", 13, 25, dict(t=500, t_min=499, batch=2)),
        ("host", "denoise", 25, 27, {}),
        ("send", "latent", 27, 28, dict(peer=0, tag=2, seq=0, nbytes=2000, path="host"))],
}


@pytest.fixture
def ping_pong(tmp_path):
    return write_trace(tmp_path / "pp.h5", PING_PONG)


def test_summary_per_rank(ping_pong):
    s = summarize(ping_pong)
    r0, r1 = s["ranks"][0], s["ranks"][1]
    assert r0["wall_s"] == approx(31) and r1["wall_s"] == approx(28)
    assert r0["compute_s"] == approx(10) and r1["compute_s"] == approx(12)
    assert r0["host_s"] == approx(2) and r1["host_s"] == approx(2)
    assert r0["comm_s"] == approx(1 + 2.5) and r1["comm_s"] == approx(1.5 + 1)
    assert r0["collective_s"] == 0 and r1["collective_s"] == 0
    assert r0["wait_s"] == approx(15.5) and r1["wait_s"] == approx(11.5)
    assert r0["idle_s"] == approx(0) and r1["idle_s"] == approx(3)
    assert (r0["nfe"], r0["nfe_samples"], r1["nfe"], r1["nfe_samples"]) == (1, 1, 1, 2)
    assert (r0["messages_sent"], r0["bytes_sent"], r0["messages_received"], r0["bytes_received"]) == (1, 1000, 1, 2000)
    assert (r1["messages_sent"], r1["bytes_sent"], r1["messages_received"], r1["bytes_received"]) == (1, 2000, 1, 1000)


def test_summary_run_labels_and_critical_path(ping_pong):
    s = summarize(ping_pong)
    run = s["run"]
    assert run["wall_s"] == approx(31)
    assert (run["nfe"], run["nfe_samples"], run["messages"], run["bytes"], run["messages_matched"]) == (2, 3, 2, 3000, 2)
    assert (run["algorithm"], run["world_size"], run["clock"]) == ("se2p", 2, "virtual")

    rows = {(r["rank"], r["kind"], r["label"]): r for r in s["labels"]}
    assert len(rows) == 9
    assert rows[(0, "recv", "latent")]["seconds"] == approx(18)
    assert rows[(0, "recv", "latent")]["wait_s"] == approx(15.5)
    assert rows[(0, "recv", "latent")]["bytes"] == 2000
    assert rows[(1, "host", "denoise")]["count"] == 1

    # eps(0) x_pred send -> recv(1) eps denoise send -> recv(0) integrate: the recvs are
    # reached through their messages, so only their parts after the send count.
    cp = s["critical_path"]
    assert cp["length_s"] == approx(31)
    assert cp["compute_s"] == approx(10 + 12)
    assert cp["host_s"] == approx(1 + 2 + 1)
    assert cp["comm_s"] == approx(1 + 1 + 1 + 2)
    assert cp["wait_s"] == approx(0)
    assert cp["end_rank"] == 0


def test_critical_path_ignores_a_message_that_waited_in_a_buffer(tmp_path):
    # Rank 0 sends at once; rank 1 is idle, then computes, then finds the message ready.
    trace = write_trace(tmp_path / "buf.h5", {
        0: [("send", "seed", 0, 1, dict(peer=1, tag=3, nbytes=8))],
        1: [("compute", "eps", 2, 10, dict(t=10, batch=1)),
            ("recv", "seed", 10, 10.5, dict(peer=0, tag=3, nbytes=8, t_ready=10))],
    })
    s = summarize(trace)
    assert s["run"]["wall_s"] == approx(10.5)
    assert s["ranks"][0]["idle_s"] == approx(9.5) and s["ranks"][1]["idle_s"] == approx(2)
    cp = s["critical_path"]
    assert (cp["length_s"], cp["compute_s"], cp["comm_s"], cp["wait_s"]) == (approx(8.5), approx(8), approx(0.5), approx(0))
    assert cp["end_rank"] == 1


def test_collectives_count_as_communication(tmp_path):
    trace = write_trace(tmp_path / "coll.h5", {
        0: [("compute", "eps", 0, 4, dict(batch=4)), ("collective", "allgather", 4, 9, dict(nbytes=64))],
        1: [("compute", "eps", 0, 8, dict(batch=4)), ("collective", "allgather", 8, 9, dict(nbytes=64))],
    })
    s = summarize(trace)
    assert s["ranks"][0]["comm_s"] == approx(5) and s["ranks"][0]["collective_s"] == approx(5)
    assert s["ranks"][1]["comm_s"] == approx(1) and s["ranks"][0]["wait_s"] == 0
    assert s["run"]["nfe_samples"] == 8
    assert s["critical_path"]["length_s"] == approx(9)


def test_format_summary(ping_pong):
    text = format_summary(ping_pong)
    lines = text.splitlines()
    assert "se2p" in lines[1] and "world size 2" in lines[1] and "clock virtual" in lines[1]
    assert any(l.startswith("params") and "steps=2" in l for l in lines)
    rank_rows = [l.split() for l in lines if l.split()[:1] in (["0"], ["1"]) and len(l.split()) == 15]
    assert [row[0] for row in rank_rows] == ["0", "1"]
    # rank 1: wall 28 U, idle 3 U, in ms
    assert rank_rows[1][1] == f"{28 * U * 1e3:.3f}" and rank_rows[1][7] == f"{3 * U * 1e3:.3f}"
    assert rank_rows[1][-1] == "node1/cuda:1"
    for label in ("eps", "x_pred", "latent", "integrate", "denoise"):
        assert f" {label} " in text
    assert f"critical path {31 * U * 1e3:.3f} ms (100.0% of wall), ends on rank 0" in text


def test_parts_of_a_crashed_run_summarise(tmp_path, ping_pong):
    path = tmp_path / "crashed.h5"
    trace = write_trace(path, PING_PONG, merge=False)
    assert not os.path.exists(path) and os.path.isdir(parts_dir(str(path)))
    assert trace.ranks == [0, 1]
    assert summarize(trace) == summarize(ping_pong)
    assert "critical path" in format_summary(trace)


def test_missing_rank_and_unmatched_send(tmp_path):
    # Rank 1 crashed before flushing anything: rank 0's send has no recv.
    path = tmp_path / "half.h5"
    write_trace(path, {0: PING_PONG[0][:3]}, merge=False)
    s = summarize(load_trace(str(path)))
    assert s["run"]["messages"] == 1 and s["run"]["messages_matched"] == 0
    assert s["critical_path"]["length_s"] == approx(12)


def _ring(n_ranks, steps):
    """Each step every rank evaluates eps, updates, sends to the next rank, receives from the previous."""
    ranks = {r: [] for r in range(n_ranks)}
    for k in range(steps):
        base = 10 * k
        for r in range(n_ranks):
            fields = dict(peer=(r + 1) % n_ranks, tag=7, seq=k, nbytes=4096) if n_ranks > 1 else None
            ranks[r].append(("compute", "eps", base, base + 6 + r * 0.5, dict(t=1000 - k, batch=1)))
            ranks[r].append(("host", "x_pred", base + 6 + r * 0.5, base + 7, {}))
            if fields:
                ranks[r].append(("send", "x_pred", base + 7, base + 7.5, fields))
                ranks[r].append(("recv", "x_pred", base + 7.5, base + 9,
                                 dict(fields, peer=(r - 1) % n_ranks, t_ready=base + 8)))
    return ranks


@pytest.mark.parametrize("n_ranks,steps", [(1, 5), (2, 3), (3, 250)])
def test_plot_timeline_writes_png(tmp_path, n_ranks, steps, monkeypatch):
    trace = write_trace(tmp_path / "ring.h5", _ring(n_ranks, steps))
    assert sum(len(ev) for ev in trace.events.values()) == n_ranks * steps * (2 if n_ranks == 1 else 4)
    drawn = _record_drawing(monkeypatch)
    out = tmp_path / "ring.png"
    assert plot_timeline(trace, str(out)) == str(out)
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    _assert_every_event_drawn(trace, drawn)


def _record_drawing(monkeypatch) -> dict:
    """Keep what plot_timeline hands matplotlib: every bar's (x, width, lane) and every arrow."""
    from matplotlib.axes import Axes
    drawn = {"bars": [], "arrows": []}
    barh, quiver = Axes.broken_barh, Axes.quiver

    def record_bars(self, xranges, yrange, **kw):
        drawn["bars"] += [(float(x), float(w), yrange[0]) for x, w in xranges]
        return barh(self, xranges, yrange, **kw)

    def record_arrows(self, x, y, u, v, **kw):
        drawn["arrows"] += list(zip(x, y, u, v))
        return quiver(self, x, y, u, v, **kw)

    monkeypatch.setattr(Axes, "broken_barh", record_bars)
    monkeypatch.setattr(Axes, "quiver", record_arrows)
    return drawn


def _assert_every_event_drawn(trace, drawn):
    # one bar per event, and a receive's second bar (waiting, then transfer), in ms; an arrow per
    # matched message from the send's start to the receive's end
    recvs = sum(int((ev["kind"] == "recv").sum()) for ev in trace.events.values())
    assert len(drawn["bars"]) == sum(len(ev) for ev in trace.events.values()) + recvs
    starts = sorted(round(x, 6) for x, _, _ in drawn["bars"])
    assert set(round(float(t) * 1e3, 6) for ev in trace.events.values() for t in ev["t_start"]) <= set(starts)
    pairs = trace.message_pairs()
    assert len(drawn["arrows"]) == len(pairs)
    for (x, _, u, _), ((sr, si), (rr, ri)) in zip(drawn["arrows"], pairs):
        assert x == pytest.approx(trace.events[sr]["t_start"][si] * 1e3)
        assert x + u == pytest.approx(trace.events[rr]["t_end"][ri] * 1e3)


def test_plot_of_the_ping_pong(tmp_path, ping_pong, monkeypatch):
    drawn = _record_drawing(monkeypatch)
    out = tmp_path / "pp.png"
    plot_timeline(ping_pong, str(out), width=8)
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    _assert_every_event_drawn(ping_pong, drawn)
    assert {y for _, _, y in drawn["bars"]} > {-0.40, 1 - 0.40}        # both ranks' lanes have bars


def test_ring_summary_at_scale(tmp_path):
    s = summarize(write_trace(tmp_path / "ring.h5", _ring(3, 250)))
    assert (s["run"]["nfe"], s["run"]["messages"], s["run"]["messages_matched"]) == (750, 750, 750)
    assert s["run"]["wall_s"] == approx(2499)
    # Per step a rank's own chain is eps + x_pred (7 U), send (0.5), recv (0.5 waiting + 1
    # transfer): 9 U. Through the message a recv adds only 1 U after the 7.5 U of its sender's
    # chain, so the own chain wins. The 1 U gap between steps is not on the path.
    cp = s["critical_path"]
    assert cp["length_s"] == approx(9 * 250)
    assert cp["wait_s"] == approx(0.5 * 250) and cp["comm_s"] == approx(1.5 * 250)
    assert cp["compute_s"] + cp["host_s"] == approx(7 * 250)


def test_chrome_export(tmp_path, ping_pong):
    doc = to_chrome(ping_pong)
    ev = doc["traceEvents"]
    complete = [e for e in ev if e["ph"] == "X"]
    assert len(complete) == 9
    eps1 = next(e for e in complete if e["tid"] == 1 and e["name"] == "eps")
    assert eps1["cat"] == "compute" and eps1["pid"] == 0
    assert eps1["ts"] == pytest.approx(13 * U * 1e6, abs=1e-3)
    assert eps1["dur"] == pytest.approx(12 * U * 1e6, abs=1e-3)
    assert eps1["args"]["t"] == 500 and eps1["args"]["t_min"] == 499 and eps1["args"]["batch"] == 2
    send0 = next(e for e in complete if e["cat"] == "send")
    assert (send0["args"]["peer"], send0["args"]["tag"], send0["args"]["nbytes"], send0["args"]["path"]) == (1, 1, 1000, "host")

    names = {e["tid"]: e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names == {0: "rank 0 (node0, cuda:0)", 1: "rank 1 (node1, cuda:1)"}

    starts = {e["id"]: e for e in ev if e["ph"] == "s"}
    ends = {e["id"]: e for e in ev if e["ph"] == "f"}
    assert len(starts) == 2 and starts.keys() == ends.keys()
    assert all(e["bp"] == "e" for e in ends.values())
    x_pred = next(i for i, e in starts.items() if e["name"] == "x_pred")
    assert (starts[x_pred]["tid"], ends[x_pred]["tid"]) == (0, 1)
    assert starts[x_pred]["ts"] == pytest.approx(11.5 * U * 1e6, abs=1e-3)     # mid-send [11, 12]
    assert ends[x_pred]["ts"] == pytest.approx(12.25 * U * 1e6, abs=1e-3)      # mid-transfer [11.5, 13]

    out = tmp_path / "pp.json"
    write_chrome(ping_pong, str(out))
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))


# --- GPU-timed spans (CUDA events), on CPU with a fake GPU ---------------------------------------

class FakeGPU:
    """A stream that runs queued work in order: ``launch(seconds)`` queues a kernel; ``advance``
    moves the device's clock (the GPU runs while the host goes on). Events complete when the
    device passes them, and report their times like CUDA events (milliseconds between two)."""

    def __init__(self, host):
        self.host = host            # the host clock (a one-element list, seconds)
        self.busy_until = 0.0       # when the queued work ends, on the host clock
        self.syncs = 0

    def launch(self, seconds):
        self.busy_until = max(self.busy_until, self.host[0]) + seconds

    def synchronize(self, device=None):
        self.syncs += 1
        self.host[0] = max(self.host[0], self.busy_until)

    def event(self):
        gpu = self

        class Event:
            at = None

            def record(self):
                self.at = max(gpu.busy_until, gpu.host[0])

            def query(self):
                return self.at <= gpu.host[0]

            def synchronize(self):
                gpu.host[0] = max(gpu.host[0], self.at)

            def elapsed_time(self, other):
                assert self.query() and other.query(), "a CUDA event read before the GPU passed it"
                return (other.at - self.at) * 1e3
        return Event()


def gpu_recorder(writer=None):
    host = [0.0]
    rec = Recorder(0, writer, clock=lambda: host[0], epoch=0.0)
    gpu = FakeGPU(host)
    rec._event, rec._synchronize = gpu.event, gpu.synchronize
    rec.gpu_timing("cuda:0")
    return rec, gpu, host


def test_gpu_spans_are_timed_by_events_without_waiting_for_the_gpu(tmp_path):
    writer = PartWriter(str(tmp_path / "g.h5"), 0, dict(algorithm="sequential", world_size=1), {})
    rec, gpu, host = gpu_recorder(writer)
    syncs = gpu.syncs
    for k in range(3):                  # each step: a 10 ms evaluation, then 1 ms of host launches
        with rec.span("compute", "eps", "SEQ:eps", step=k, batch=1):
            gpu.launch(0.010)
        with rec.span("host", "step", "SEQ:step", step=k):
            host[0] += 0.001            # the host issues the step's small kernels meanwhile
            gpu.launch(0.0002)
    assert gpu.syncs == syncs           # the host never waited: it is far ahead of the GPU
    assert host[0] < 0.01 and len(rec._queue) == 6
    rec.record("send", "latent", "X:1", host[0], host[0] + 1e-5, peer=1, tag=0, seq=0, nbytes=8, path="host")
    assert len(rec._queue) == 7         # a host-timed row waits behind them, to keep the order
    host[0] = gpu.busy_until            # the GPU finishes; the next record hands everything on
    rec.record("host", "cpu-only", "X:2", host[0], host[0] + 1e-6)
    assert not rec._queue and rec.count("compute", "eps") == 3
    rec.close()
    merge_parts(str(tmp_path / "g.h5"))
    ev = load_trace(str(tmp_path / "g.h5")).events[0]
    kinds = [k for k in ev["kind"]]
    assert kinds == ["compute", "host"] * 3 + ["send", "host"]
    compute = ev[ev["kind"] == "compute"]
    assert np.allclose(compute["t_end"] - compute["t_start"], 0.010)          # GPU time, not launch time
    assert np.allclose(np.diff(compute["t_start"]), 0.0102)                   # back to back on the GPU
    assert (ev["t_ready"][:6] <= ev["t_start"][:6]).all()                     # issued before it ran
    steps = ev[(ev["kind"] == "host") & (ev["label"] == "step")]
    assert np.allclose(steps["t_end"] - steps["t_start"], 0.0002)
    assert rec.waiting == 0.0          # t_ready of a GPU row is not a receive's waiting
    assert rec.totals[("compute", "eps")][1] == pytest.approx(0.030)


def test_gpu_rows_waiting_too_long_make_the_recorder_wait_once():
    rec, gpu, host = gpu_recorder()
    syncs = gpu.syncs
    for k in range(300):               # more rows than RESOLVE_ROWS: one wait, then a fresh anchor
        with rec.span("compute", "eps", "SEQ:eps", step=k, batch=1):
            gpu.launch(0.001)
    assert gpu.syncs == syncs + 1 and len(rec._queue) == 300 - 256
    assert rec.totals[("compute", "eps")][0] == 256
    rec.flush()
    assert rec.totals[("compute", "eps")] == [300, pytest.approx(0.300), 0, 300]


def test_replay_and_critical_path_keep_a_receive_that_overlapped_gpu_work(tmp_path):
    """A CUDA-event trace: rank 1 receives (host) while its GPU still computes. Replay under the
    recorded costs gives the recorded times back; the critical path does not count the overlap."""
    from pardiff.sim.replay import retime
    ranks = {
        0: [("compute", "eps", 0, 10, dict(t=999, batch=1)),
            ("send", "x", 10, 11, dict(peer=1, tag=1, seq=0, nbytes=8, path="pinned"))],
        1: [("compute", "eps", 0, 20, dict(t=999, batch=1)),
            ("recv", "x", 2, 12, dict(peer=0, tag=1, seq=0, nbytes=8, path="pinned", t_ready=11)),
            ("compute", "eps", 20, 30, dict(t=998, batch=1))],
    }
    trace = write_trace(tmp_path / "o.h5", ranks)
    new = retime(trace)
    for r, ev in trace.events.items():
        for field in ("t_start", "t_ready", "t_end"):
            assert np.allclose(new[r][field], ev[field], atol=1e-12), (r, field)
    path = summarize(trace)["critical_path"]
    assert path["length_s"] == approx(30)          # rank 1's GPU: 20 + 10, the receive hidden under it


def test_the_anchor_is_renewed_at_least_once_a_second_even_when_rows_resolve_by_themselves():
    rec, gpu, host = gpu_recorder()
    syncs = gpu.syncs
    for k in range(30):                # 0.1 s steps: the GPU is done before the next span each time
        with rec.span("compute", "eps", "SEQ:eps", step=k, batch=1):
            gpu.launch(0.05)
        host[0] += 0.1
    assert gpu.syncs - syncs in (2, 3)             # one wait per second over 3 s, not one per row


def test_a_failing_rank_keeps_its_finished_rows_without_waiting_for_the_gpu(tmp_path, capsys):
    writer = PartWriter(str(tmp_path / "f.h5"), 0, dict(algorithm="sequential", world_size=1), {})
    rec, gpu, host = gpu_recorder(writer)
    with rec.span("compute", "eps", "SEQ:eps", step=0, batch=1):
        gpu.launch(0.01)
    host[0] = gpu.busy_until           # the first evaluation is done ...
    with rec.span("compute", "eps", "SEQ:eps", step=1, batch=1):
        gpu.launch(3600.0)             # ... the second never ends (a hung GPU)
    syncs = gpu.syncs
    rec.close(wait_for_gpu=False)
    assert gpu.syncs == syncs and "1 trace rows dropped" in capsys.readouterr().err
    merge_parts(str(tmp_path / "f.h5"))
    assert len(load_trace(str(tmp_path / "f.h5")).events[0]) == 1


def test_replay_does_not_send_before_the_gpu_made_the_data(tmp_path):
    """The host issued the send early (it then waited for the GPU inside the send); under a
    network model the message still leaves after the rank's earlier GPU rows."""
    from pardiff.sim.network import Link, Network
    from pardiff.sim.replay import retime
    ranks = {
        0: [("compute", "eps", 0, 100, dict(t=999, batch=1)),
            ("host", "x_pred", 100, 104, {}),
            ("send", "x_pred", 2, 105, dict(peer=1, tag=1, seq=0, nbytes=8, path="pinned"))],
        1: [("recv", "x_pred", 0, 106, dict(peer=0, tag=1, seq=0, nbytes=8, path="pinned", t_ready=105))],
    }
    trace = write_trace(tmp_path / "s.h5", ranks)
    net = Network("n", Link(U, 1e12), Link(U, 1e12), 8)
    new = retime(trace, net)
    assert new[0]["t_start"][2] == approx(104)
    assert new[1]["t_ready"][0] == pytest.approx(105 * U, abs=1e-9)        # sent at 104, one U on the wire


def test_critical_path_stops_at_a_recv_that_ended_before_its_send_returned(tmp_path):
    """A rendezvous send returns after its receiver already has the data: the path through the
    message reaches the recv's end, so it does not also count the send's tail (never > wall)."""
    ranks = {
        0: [("compute", "eps", 0, 10, dict(t=999, batch=1)),
            ("send", "x", 10, 20, dict(peer=1, tag=1, seq=0, nbytes=8, path="host"))],
        1: [("recv", "x", 0, 12, dict(peer=0, tag=1, seq=0, nbytes=8, path="host", t_ready=11)),
            ("compute", "eps", 12, 22, dict(t=998, batch=1))],
    }
    path = summarize(write_trace(tmp_path / "r.h5", ranks))["critical_path"]
    assert path["length_s"] == approx(22) and path["end_rank"] == 1   # 10 compute, 2 comm, 10 compute


class FakeNCCL:
    """A Comm whose GPU messages behave like NCCL's on the fake GPU: a message waits for the work
    queued before it, moves on a stream of its own (``transfer_s``), and ``wait()`` (a blocking
    send or receive, or a pending send's wait) makes the compute stream wait for it; the host
    never waits."""

    @staticmethod
    def make(recorder, gpu, transfer_s):
        from pardiff.comm.base import Comm

        def post():
            done = max(gpu.busy_until, gpu.host[0]) + transfer_s      # on NCCL's stream

            def wait():
                gpu.busy_until = max(gpu.busy_until, done)
            return wait

        class _Comm(Comm):
            def _stream_ordered(self, tensor):
                return True

            def _post_send(self, tensor, dest, tag, blocking):
                wait = post()
                if blocking:
                    wait()
                return "nccl", tensor.numel() * tensor.element_size(), wait

            def _recv_into(self, out, source, tag):
                post()()
                return "nccl", out.numel() * out.element_size(), recorder.now()
        return _Comm(0, 2, recorder)


def test_stream_ordered_messages_are_timed_on_the_gpu_without_the_host_waiting(tmp_path):
    """Compute, a send, a receive, an isend, compute, the isend's wait: issued by the host in well
    under the GPU's time, written with the times the GPU passed them, in order; the isend's
    transfer overlaps the compute after it."""
    import torch
    writer = PartWriter(str(tmp_path / "n.h5"), 0, dict(algorithm="se2p", world_size=2), {})
    rec, gpu, host = gpu_recorder(writer)
    comm = FakeNCCL.make(rec, gpu, transfer_s=0.001)
    x = torch.zeros(4)
    syncs = gpu.syncs
    with rec.span("compute", "eps", "SE2P-A1:15", step=1, batch=1):
        gpu.launch(0.010)
    comm.send(x, 1, label="x_pred", line="SE2P-A1:9", step=1)
    comm.recv(x, 1, label="latent", line="SE2P-A1:10", step=1)
    pending = comm.isend(x, 1, label="latent", line="SE2P-A1:10", step=0)
    with rec.span("compute", "eps", "SE2P-A1:15", step=0, batch=1):
        gpu.launch(0.010)
    pending.wait()
    assert gpu.syncs == syncs and host[0] < 0.001      # the host never waited for the GPU
    rec.close()
    merge_parts(str(tmp_path / "n.h5"))
    ev = load_trace(str(tmp_path / "n.h5")).events[0]
    assert [k for k in ev["kind"]] == ["compute", "send", "recv", "send", "compute", "wait"]
    # the isend posts at 12 ms and its transfer (12-13 ms) runs under the compute (12-22 ms)
    expected = [(0.0, 0.010), (0.010, 0.011), (0.011, 0.012), (0.012, 0.012), (0.012, 0.022), (0.022, 0.022)]
    assert np.allclose(ev["t_start"], [s for s, _ in expected]) and np.allclose(ev["t_end"], [e for _, e in expected])
    messages = ev[ev["kind"] != "compute"]
    assert (messages["path"] == "nccl").all()
    assert np.array_equal(messages["t_ready"], messages["t_start"])   # no probe: t_ready is the start
    assert rec.waiting == 0.0


def test_a_failing_rank_keeps_host_timed_rows_queued_behind_unfinished_gpu_work(tmp_path, capsys):
    writer = PartWriter(str(tmp_path / "h.h5"), 0, dict(algorithm="se2p", world_size=2), {})
    rec, gpu, host = gpu_recorder(writer)
    with rec.span("compute", "eps", "SE2P-A1:15", step=0, batch=1):
        gpu.launch(3600.0)             # never ends
    rec.record("send", "seed", "SE2P-A1:12", 0.001, 0.002, peer=1, tag=12, seq=0, nbytes=8, path="host")
    rec.close(wait_for_gpu=False)
    assert "1 trace rows dropped" in capsys.readouterr().err
    merge_parts(str(tmp_path / "h.h5"))
    assert [k for k in load_trace(str(tmp_path / "h.h5")).events[0]["kind"]] == ["send"]


def test_replay_sends_a_cpu_tensor_without_waiting_for_the_gpu(tmp_path):
    """Proc 0's host sends the step's seed (a CPU tensor) while its GPU computes: under a network
    model the seed still leaves then, and the receiver's next evaluation need not wait for the
    sender's GPU; a GPU latent sent after the evaluation does wait for it."""
    from pardiff.sim.network import Link, Network
    from pardiff.sim.replay import retime
    ranks = {
        0: [("compute", "eps", 0, 100, dict(t=999, batch=1)),
            ("send", "seed", 1, 2, dict(peer=1, tag=12, seq=0, nbytes=8, path="host")),
            ("send", "latent", 100, 101, dict(peer=1, tag=10, seq=0, nbytes=8, path="nccl"))],
        1: [("recv", "seed", 1, 3, dict(peer=0, tag=12, seq=0, nbytes=8, path="host", t_ready=2)),
            ("compute", "eps", 3, 103, dict(t=998, batch=1)),
            ("recv", "latent", 103, 104, dict(peer=0, tag=10, seq=0, nbytes=8, path="nccl", t_ready=103))],
    }
    trace = write_trace(tmp_path / "h.h5", ranks)
    new = retime(trace, Network("n", Link(U, 1e12), Link(U, 1e12), 8))
    assert new[0]["t_start"][1] == approx(1)         # the seed: where the host sent it
    assert new[1]["t_start"][1] == pytest.approx(2 * U, abs=1e-9)   # when the seed came, not after rank 0's GPU
    assert new[0]["t_start"][2] == approx(100)       # the latent: after the GPU made it


def test_replay_keeps_a_host_message_sent_while_the_gpu_is_several_rows_behind(tmp_path):
    """The host has issued two evaluations (0-100, 100-200 on the GPU) when it sends the seed at
    2: replay keeps the seed at 2, and rank 1 computes when it came, under recorded costs and
    under a network model."""
    from pardiff.sim.network import Link, Network
    from pardiff.sim.replay import retime
    ranks = {
        0: [("compute", "eps", 0, 100, dict(t=999, batch=1)),
            ("compute", "eps", 100, 200, dict(t=998, batch=1)),
            ("send", "seed", 2, 3, dict(peer=1, tag=12, seq=0, nbytes=8, path="host"))],
        1: [("recv", "seed", 1, 4, dict(peer=0, tag=12, seq=0, nbytes=8, path="host", t_ready=3)),
            ("compute", "eps", 4, 104, dict(t=999, batch=1))],
    }
    trace = write_trace(tmp_path / "a.h5", ranks, timing="cuda-events")
    for network in (None, Network("n", Link(U, 1e12), Link(U, 1e12), 8)):
        new = retime(trace, network)
        assert new[0]["t_start"][2] == approx(2), network
        assert new[1]["t_start"][1] < 5 * U, network


def test_replay_under_recorded_costs_counts_an_nccl_receives_wait_once(tmp_path):
    """An NCCL recv has no probe (t_ready = t_start): posted at 10, it waited for a send that began
    at 25 and ended at 30. Replayed under its recorded costs it ends at 30 again, not 45."""
    from pardiff.sim.replay import retime
    ranks = {
        0: [("compute", "eps", 0, 25, dict(t=999, batch=1)),
            ("send", "latent", 25, 30, dict(peer=1, tag=10, seq=0, nbytes=8, path="nccl"))],
        1: [("compute", "eps", 0, 10, dict(t=999, batch=1)),
            ("recv", "latent", 10, 30, dict(peer=0, tag=10, seq=0, nbytes=8, path="nccl", t_ready=10))],
    }
    trace = write_trace(tmp_path / "w.h5", ranks, timing="cuda-events")
    new = retime(trace)
    for r, ev in trace.events.items():
        assert np.allclose(new[r]["t_end"], ev["t_end"], atol=1e-12), r


def test_an_nccl_receive_waits_until_its_send_began(tmp_path):
    """A receive without a probe (t_ready = t_start) posted at 10 whose send began at 25: the
    summary counts 15 waiting and 5 transfer, not 20 transfer."""
    ranks = {
        0: [("compute", "eps", 0, 25, dict(t=999, batch=1)),
            ("send", "latent", 25, 30, dict(peer=1, tag=10, seq=0, nbytes=8, path="nccl"))],
        1: [("compute", "eps", 0, 10, dict(t=999, batch=1)),
            ("recv", "latent", 10, 30, dict(peer=0, tag=10, seq=0, nbytes=8, path="nccl", t_ready=10))],
    }
    s = summarize(write_trace(tmp_path / "n.h5", ranks, timing="cuda-events"))
    assert s["ranks"][1]["wait_s"] == approx(15) and s["ranks"][1]["comm_s"] == approx(5)
    assert s["critical_path"]["length_s"] == approx(30)
