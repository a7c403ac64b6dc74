"""A timeline of a trace as a PNG: one lane per rank, an arrow per message."""
from __future__ import annotations

import numpy as np

from .reader import Trace
from .summary import ready_times

EPS_COLOUR = "#1c4e9c"
COMPUTE_COLOURS = ("#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#5c940d")   # other model calls
HOST_COLOURS = ("#ffd8a8", "#b2f2bb", "#d0bfff", "#ffc9c9", "#a5d8ff", "#fff3bf", "#dee2e6")
SEND_COLOUR = "#c92a2a"
TRANSFER_COLOUR = "#2f9e44"
WAIT_COLOUR = "#c3e6cb"
COLLECTIVE_COLOUR = "#7048e8"
ARROW_COLOUR = "#495057"

# Within a lane centred on y (the axis is inverted, so smaller y is higher up):
WORK_ROW = (-0.40, 0.50)   # compute and host bars: (offset of the top edge, height)
COMM_ROW = (0.15, 0.25)    # thin send / recv / collective bars below them


def _colours(trace: Trace) -> dict:
    """(kind, label) -> colour, the same label the same colour on every rank."""
    labels = {kind: sorted({l for ev in trace.events.values() for l in ev["label"][ev["kind"] == kind]})
              for kind in ("compute", "host")}
    colours = {}
    others = [l for l in labels["compute"] if l != "eps"]
    if "eps" in labels["compute"]:
        colours[("compute", "eps")] = EPS_COLOUR
    for i, label in enumerate(others):
        colours[("compute", label)] = COMPUTE_COLOURS[i % len(COMPUTE_COLOURS)]
    for i, label in enumerate(labels["host"]):
        colours[("host", label)] = HOST_COLOURS[i % len(HOST_COLOURS)]
    return colours


def plot_timeline(trace: Trace, out_path: str, width: float = 14.0, dpi: int = 120) -> str:
    """Draw the trace's timeline to ``out_path`` (PNG) and return the path.

    Lanes top to bottom are ranks 0, 1, ...; compute and host bars are coloured by
    label (eps strongest); sends, recvs (waiting part light and hatched) and
    collectives are thin bars under them; each matched message is an arrow from the
    send's start to the recv's end. Bars are drawn per (rank, kind, label) with
    ``broken_barh`` and arrows as one ``quiver``, so thousands of events stay quick.
    """
    # The Agg canvas directly, without pyplot: works headless and leaves the
    # caller's matplotlib backend alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ranks = trace.ranks
    lane = {r: i for i, r in enumerate(ranks)}
    colours = _colours(trace)
    fig = Figure(figsize=(width, 1.2 + 0.7 * max(len(ranks), 1)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    legend = {}

    def bars(y, row, starts, ends, colour, name, **style):
        if len(starts):
            ranges = np.column_stack([starts * 1e3, (ends - starts) * 1e3])
            ax.broken_barh(ranges, (y + row[0], row[1]), facecolors=colour, linewidth=0, **style)
            legend.setdefault(name, Patch(facecolor=colour, label=name, **style))

    readies = ready_times(trace)
    for r in ranks:
        ev, y = trace.events[r], lane[r]
        if not len(ev):
            continue
        start, end, kind, label = ev["t_start"], ev["t_end"], ev["kind"], ev["label"]
        for (k, l), colour in colours.items():
            m = (kind == k) & (label == l)
            bars(y, WORK_ROW, start[m], end[m], colour, l if k == "compute" else f"{l} (host)")
        m = kind == "send"
        bars(y, COMM_ROW, start[m], end[m], SEND_COLOUR, "send")
        m = kind == "recv"
        ready = readies[r]
        bars(y, COMM_ROW, start[m], ready[m], WAIT_COLOUR, "recv waiting", hatch="////", edgecolor=TRANSFER_COLOUR)
        bars(y, COMM_ROW, ready[m], end[m], TRANSFER_COLOUR, "recv transfer")
        m = kind == "collective"
        bars(y, COMM_ROW, start[m], end[m], COLLECTIVE_COLOUR, "collective")

    messages = trace.message_pairs()
    if messages:
        comm_mid = COMM_ROW[0] + COMM_ROW[1] / 2
        xy = np.array([(trace.events[sr]["t_start"][si] * 1e3, lane[sr] + comm_mid,
                        trace.events[rr]["t_end"][ri] * 1e3, lane[rr] + comm_mid)
                       for (sr, si), (rr, ri) in messages])
        ax.quiver(xy[:, 0], xy[:, 1], xy[:, 2] - xy[:, 0], xy[:, 3] - xy[:, 1],
                  angles="xy", scale_units="xy", scale=1, color=ARROW_COLOUR,
                  alpha=0.7 if len(messages) <= 200 else 0.3,   # fainter when they crowd the lanes
                  width=0.0012, headwidth=5, headlength=6, headaxislength=5, zorder=3)
        legend["message"] = Line2D([], [], color=ARROW_COLOUR, marker=">", markersize=5, label="message")

    ax.set_yticks(range(len(ranks)), [f"rank {r}" for r in ranks])
    ax.set_ylim(len(ranks) - 0.5, -0.5)    # inverted: rank 0 on top
    ax.set_xlabel("time since the run's epoch (ms)")
    ax.grid(axis="x", alpha=0.3)
    algorithm = trace.attrs.get("algorithm", "?")
    clock = trace.attrs.get("clock", "?")
    ax.set_title(f"{algorithm}: {trace.world_size} ranks ({clock} clock)")
    if legend:
        ax.legend(handles=list(legend.values()), loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  fontsize=8, frameon=False)
    fig.savefig(out_path, dpi=dpi, bbox_inches="tight")
    return str(out_path)
