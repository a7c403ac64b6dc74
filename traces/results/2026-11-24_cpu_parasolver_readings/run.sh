#!/usr/bin/env bash
# The runs behind docs/algorithms/parasolver.md readings 6 and 7 (gmm, 1 rank, CPU): run from this folder.
set -euo pipefail
common=(--model gmm --steps 100 --subintervals 100 --window 20 --precondition 2 --seed 1 --batch 2)
for s in ddim dpmsolver; do
    python3 -m pardiff run sequential --sampler $s --model gmm --steps 100 --seed 1 --batch 2 --out seq_$s.npy
done
python3 -m pardiff run parasolver --sampler dpmsolver "${common[@]}" --tol 0.05 --out dpm_pardiff.npy --report dpm_pardiff.json
python3 -m pardiff run parasolver --sampler dpmsolver --missing-history settled "${common[@]}" --tol 0.05 --out dpm_settled.npy --report dpm_settled.json
python3 -m pardiff run parasolver --sampler dpmsolver --missing-history settled "${common[@]}" --tol 0 --out dpm_settled_tol0.npy --report dpm_settled_tol0.json
python3 -m pardiff run parasolver --sampler ddim "${common[@]}" --tol 0.05 --out ddim_pardiff.npy --report ddim_pardiff.json
python3 -m pardiff run parasolver --sampler ddim --last-variance authors "${common[@]}" --tol 0.05 --out ddim_authors_sigma.npy --report ddim_authors_sigma.json
python3 - <<'PY'
import json
import numpy as np
rows = []
for name, seq in (("dpm_pardiff", "dpmsolver"), ("dpm_settled", "dpmsolver"), ("dpm_settled_tol0", "dpmsolver"),
                  ("ddim_pardiff", "ddim"), ("ddim_authors_sigma", "ddim")):
    r = json.load(open(f"{name}.json"))
    diff = float(np.abs(np.load(f"{name}.npy") - np.load(f"seq_{seq}.npy")).max())
    rows.append(f"| {name} | {r['params']['tol']} | {r['iterations']} | {r['nfe']} | {diff:.2g} |")
table = "| run | δ | iterations | NFE | max difference to the sequential sample |\n|---|---:|---:|---:|---:|\n" + "\n".join(rows)
open("table.md", "w").write(table + "\n")
print(table)
PY
rm -f *.npy
