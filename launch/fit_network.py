#!/usr/bin/env python3
"""Fit a network link (latency α, bandwidth β) to the messages of recorded traces.

Every matched message whose receiver was already waiting shows when the data arrived: its
time from send start to recv end is one sample of α + n/β. The fit (relative least squares,
pardiff.bench.fit_link) is written as a network FILE.json for ``pardiff simulate --network``,
the same link inside and between nodes unless --inter is given.

    python3 launch/fit_network.py traces/h200x2/*2gpu.h5 traces/h200x2/se2p_*.h5 --name h200-mpi-staged \
        --out net.json
"""
from __future__ import annotations

import argparse
import json

from pardiff.bench import fit_link
from pardiff.sim.network import load_network
from pardiff.trace.reader import load_trace


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--name", required=True)
    ap.add_argument("--ranks-per-node", type=int, default=8)
    ap.add_argument("--inter", help="a built-in network whose inter-node link to use (default: the fitted one)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    nbytes, seconds = [], []
    for path in args.traces:
        for send, recv in load_trace(path).messages():
            if recv["t_ready"] > recv["t_start"] + 1e-6:
                nbytes.append(int(send["nbytes"]))
                seconds.append(float(recv["t_end"] - send["t_start"]))
    link = fit_link(nbytes, seconds)
    inter = load_network(args.inter).inter.__dict__ if args.inter else link
    net = {"name": args.name, "intra": link, "inter": inter, "ranks_per_node": args.ranks_per_node,
           "source": f"fitted to {len(nbytes)} messages of {', '.join(args.traces)} (launch/fit_network.py)"}
    with open(args.out, "w") as f:
        json.dump(net, f, indent=1)
    print(f"{args.name}: latency {link['latency_s'] * 1e6:.1f} us, bandwidth {link['bandwidth_Bps'] / 1e9:.3f} GB/s "
          f"from {len(nbytes)} messages")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
