#!/usr/bin/env bash
# Simulator inputs and checks measured on one GPU (issue 5): compute profiles of the models
# (pardiff bench model), the staged and host message paths (pardiff bench comm, two ranks),
# and fresh 1-GPU traces of sequential DDPM-10 and ParaSolver DDIM-50 on arch:ddpm-church-256.
#
#   launch/sim_validation.sh OUT_DIR
#
# Runs from the repository root without installing pardiff; docs/simulator.md puts the
# simulator's predictions next to these traces and the 2×H200 ones in traces/h200x2/.
set -euo pipefail
out=${1:?usage: launch/sim_validation.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
export PARDIFF=${PARDIFF:-$(command -v python3) -m pardiff}
export PYTHONPATH="$(dirname "$here")${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name(0).split()[-1].lower())")
for spec in "arch:ddpm-church-256 float16 1,2,4,8,16,32" "arch:ddpm-church-256 float32 1,2,4,8,16" \
            "arch:sd2-unet float16 1,2,4,8" "arch:dit-xl-2-256 float16 1,2,4,8,16" \
            "gmm float32 1,2,4,8,16,32,64"; do
    set -- $spec
    $PARDIFF bench model --model "$1" --dtype "$2" --batch "$3" --device cuda \
        --out "$out/${gpu}_${1#arch:}_$2.json"
done
"$here/mpirun.sh" 2 bench comm --device cuda --out "$out/comm_cuda_staged.json"
"$here/mpirun.sh" 2 bench comm --device cpu --out "$out/comm_cpu_host.json"
"$here/mpirun.sh" 1 run sequential --sampler ddpm --model arch:ddpm-church-256 --dtype float16 --steps 10 \
    --seed 3 --device cuda --report "$out/seq_church_ddpm10_1gpu.json" --trace "$out/seq_church_ddpm10_1gpu.h5"
"$here/mpirun.sh" 1 run parasolver --sampler ddim --model arch:ddpm-church-256 --dtype float16 --steps 50 \
    --subintervals 25 --precondition 5 --window 25 --tol 0.005 --seed 0 --device cuda \
    --report "$out/parasolver_church_ddim50_1gpu.json" --trace "$out/parasolver_church_ddim50_1gpu.h5"
