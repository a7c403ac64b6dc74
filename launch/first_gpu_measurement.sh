#!/usr/bin/env bash
# The first GPU measurement (issue 3): sequential vs ParaSolver vs ParaDiGMS on 1 and 2 GPUs,
# DDIM-50 and DDPM-1000, with the gmm model and arch:ddpm-church-256 (fp16), plus SE2P smoke runs.
#
#   launch/first_gpu_measurement.sh OUT_DIR [ddim|ddpm|all]
#
# Runs from the repository root without installing pardiff (PARDIFF="python3 -m pardiff").
# Results: OUT_DIR/*.json (one per model and case, with device and commands), logs, traces.
set -euo pipefail
out=${1:?usage: launch/first_gpu_measurement.sh OUT_DIR [ddim|ddpm|all]}
what=${2:-all}
here=$(cd "$(dirname "$0")" && pwd)
# an absolute interpreter: Open MPI prepends its own bin/ to PATH, where another python3 may live
export PARDIFF=${PARDIFF:-$(command -v python3) -m pardiff}
export PYTHONPATH="$(dirname "$here")${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"
if [ "$what" != ddpm ]; then
    # SE2P smoke: the staged GPU path, device selection, fp16 on a real architecture
    "$here/mpirun.sh" 1 run sequential --sampler ddpm --model arch:ddpm-church-256 --dtype float16 --steps 10 \
        --seed 3 --device cuda --report "$out/seq_church_ddpm10.json" --trace "$out/seq_church_ddpm10.h5"
    "$here/mpirun.sh" 2 run se2p --model arch:ddpm-church-256 --dtype float16 --steps 10 --seed 3 --device cuda \
        --report "$out/se2p_church_ddpm10.json" --trace "$out/se2p_church_ddpm10.h5"
    "$here/mpirun.sh" 2 run se2p --model gmm --steps 10 --seed 3 --batch 2 --device cuda \
        --report "$out/se2p_gmm_ddpm10.json" --trace "$out/se2p_gmm_ddpm10.h5"
    python3 "$here/bench_parallel.py" --out "$out" --models gmm,arch:ddpm-church-256 --cases ddim-50 --gpus 1,2 --trace
fi
if [ "$what" != ddim ]; then
    python3 "$here/bench_parallel.py" --out "$out" --models gmm,arch:ddpm-church-256 --cases ddpm-1000 --gpus 1,2 \
        --timeout 240
fi
