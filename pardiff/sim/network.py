"""Network cost models: what a message and a collective cost between virtual ranks.

A network has two link classes, one inside a node and one between nodes, each a latency α
(seconds) and a bandwidth β (bytes/s), and a number of ranks per node (ranks r and s share a
node when r // ranks_per_node == s // ranks_per_node). A point-to-point message of n bytes
costs α + n/β of its link. Collectives are priced by the algorithm an MPI library would run,
with shared links contended:

- allreduce (and barrier, n = 0): a ring over the ranks in rank order, 2(P−1) steps of n/P
  bytes each, every step as slow as its slowest hop;
- broadcast: a binomial tree, ⌈log₂ P⌉ rounds; in each round the messages that leave one
  node share its inter-node link (bandwidth β/k for k concurrent senders).

docs/simulator.md gives the sources of the built-in figures.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Link:
    latency_s: float
    bandwidth_Bps: float

    def time(self, nbytes: float, share: int = 1) -> float:
        return self.latency_s + nbytes * share / self.bandwidth_Bps


@dataclass(frozen=True)
class Network:
    name: str
    intra: Link                  # inside a node
    inter: Link                  # between nodes
    ranks_per_node: int
    source: str = ""

    def with_ranks_per_node(self, k: int | None) -> "Network":
        return self if k is None else Network(self.name, self.intra, self.inter, k, self.source)

    def node(self, rank: int) -> int:
        return rank // self.ranks_per_node

    def link(self, a: int, b: int) -> Link:
        return self.intra if self.node(a) == self.node(b) else self.inter

    def message(self, src: int, dst: int, nbytes: int) -> float:
        """Seconds for one point-to-point message."""
        return self.link(src, dst).time(nbytes)

    def allreduce(self, size: int, nbytes: int) -> float:
        """Seconds for a ring allreduce of ``nbytes`` over ranks 0 .. size-1 (0 on one rank)."""
        if size == 1:
            return 0.0
        hop = max(self.link(r, (r + 1) % size).time(nbytes / size) for r in range(size))
        return 2 * (size - 1) * hop

    def bcast(self, size: int, root: int, nbytes: int) -> float:
        """Seconds for a binomial-tree broadcast from ``root``."""
        total, have = 0.0, 1                 # ranks (relative to root) that hold the data
        while have < size:
            pairs = [(src, src + have) for src in range(have) if src + have < size]
            pairs = [((s + root) % size, (d + root) % size) for s, d in pairs]
            leaving = {}
            for s, d in pairs:
                if self.node(s) != self.node(d):
                    leaving[self.node(s)] = leaving.get(self.node(s), 0) + 1
            total += max(self.link(s, d).time(nbytes, leaving.get(self.node(s), 1) if self.node(s) != self.node(d)
                                              else 1) for s, d in pairs)
            have *= 2
        return total

    def to_dict(self) -> dict:
        return asdict(self)


def _net(name, intra, inter, ranks_per_node, source):
    return Network(name, Link(*intra), Link(*inter), ranks_per_node, source)


IB_HDR = (1.5e-6, 25e9)
BUILTIN = {
    "h200-mpi-staged": _net("h200-mpi-staged", (34e-6, 2.0e9), IB_HDR, 8,
                            "intra: the path pardiff's MPI backend takes between two H200s today (GPU tensors "
                            "staged through host memory, Open MPI 4.1.6), fitted by launch/fit_network.py to the "
                            "430 messages of the 2×H200 traces in traces/h200x2/ (34.1 µs, 2.01 GB/s); inter: ib-hdr"),
    # intra-node link, inter-node link, ranks (GPUs) per node
    "nvlink": _net("nvlink", (25e-6, 209e9), IB_HDR, 8,
                   "intra: NCCL send/recv between two H200s over NVLink NV18, measured here (DESIGN.md): "
                   "786 KB in 28.6 µs, 8 MB in 65 µs -> α ≈ 25 µs, β ≈ 209 GB/s; inter: ib-hdr"),
    "pcie": _net("pcie", (10e-6, 25e9), IB_HDR, 8,
                 "PCIe 4.0 x16: 32 GB/s per direction nominal, ~25 GB/s achieved by device-to-device "
                 "copies; ~10 µs per message through the host (cudaMemcpy + MPI); inter: ib-hdr"),
    "ib-hdr": _net("ib-hdr", IB_HDR, IB_HDR, 1,
                   "InfiniBand HDR: 200 Gb/s = 25 GB/s per port; ~1-2 µs MPI latency (NVIDIA ConnectX-6 "
                   "figures); one rank per node"),
    "eth-100g": _net("eth-100g", (8e-6, 12.5e9), (8e-6, 12.5e9), 1,
                     "100 Gb Ethernet: 12.5 GB/s line rate; ~5-10 µs MPI latency with RoCE; one rank per node"),
    "eth-10g": _net("eth-10g", (40e-6, 1.25e9), (40e-6, 1.25e9), 1,
                    "10 Gb Ethernet: 1.25 GB/s line rate; ~30-50 µs MPI latency over TCP; one rank per node"),
}


def load_network(spec: str) -> Network:
    """A built-in network by name, or a JSON file with the fields of ``Network``."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    if not spec.endswith(".json"):
        raise ValueError(f"unknown network {spec!r}: one of {', '.join(BUILTIN)}, or a FILE.json")
    if not os.path.isfile(spec):
        raise ValueError(f"no such file {spec!r}")
    try:
        d = json.load(open(spec))
        net = Network(d.get("name", os.path.basename(spec)), Link(**d["intra"]), Link(**d["inter"]),
                      int(d["ranks_per_node"]), d.get("source", ""))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{spec}: needs intra and inter {{latency_s, bandwidth_Bps}} and ranks_per_node ({e})")
    for link in (net.intra, net.inter):
        if not (link.latency_s >= 0 and link.bandwidth_Bps > 0 and math.isfinite(link.bandwidth_Bps)):
            raise ValueError(f"{spec}: latency must be >= 0 and bandwidth > 0")
    if net.ranks_per_node < 1:
        raise ValueError(f"{spec}: ranks_per_node must be >= 1")
    return net
