#!/usr/bin/env python3
"""Markdown table of bench_parallel.py results: python3 launch/results_table.py RESULT.json..."""
import json
import sys


def main(paths):
    print("| model | case | method | GPUs | iterations | NFE | wall (s) | speedup | max |Δ| vs seq | RMS Δ vs seq |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        r = json.load(open(path))
        for row in r["rows"]:
            if row["rc"] != 0:
                print(f"| {r['model']} | {r['case']} | {row['algorithm']} | {row['gpus']} | failed (rc {row['rc']}) |"
                      " | | | | |")
                continue
            speed = f"{row['speedup']:.2f}×" if "speedup" in row else "1.00×"
            diff = f"{row['max_abs_diff_vs_sequential']:.2g}" if "max_abs_diff_vs_sequential" in row else "—"
            rms = f"{row['rms_diff_vs_sequential']:.2g}" if "rms_diff_vs_sequential" in row else "—"
            print(f"| {r['model']} | {r['case']} | {row['algorithm']} | {row['gpus']} | {row.get('iterations') or '—'} "
                  f"| {row['nfe']} | {row['wall_s']:.3f} | {speed} | {diff} | {rms} |")


if __name__ == "__main__":
    main(sys.argv[1:])
