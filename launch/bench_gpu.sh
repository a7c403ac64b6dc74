#!/usr/bin/env bash
# Every GPU benchmark of docs/performance.md on one node, results under OUT:
#
#   launch/bench_gpu.sh OUT [parts]        parts: any of tests model comm tracing parallel window
#                                          two-gpu two-gpu-solvers (default: tests model comm tracing parallel)
#
# Uses every GPU the node has (GPUS=N to use fewer); two-GPU parts (NCCL, SE2P, 2-rank solvers)
# run only where there are two. Needs mpirun/mpiexec on PATH (see launch/mpirun.sh) and pardiff
# importable by $PYTHON. Each part writes JSON naming the device and versions; copy OUT into
# traces/results/<date>_<device>_perf/ and run launch/perf_table.py on it for the tables.
set -euo pipefail
out=${1:?usage: launch/bench_gpu.sh OUT [parts...]}
shift
parts=${*:-tests model comm tracing parallel}
here=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-$(command -v python3)}     # by absolute path: Open MPI puts its own bin/ first on the ranks' PATH
export PARDIFF="${PARDIFF:-$PYTHON -m pardiff}"
gpus=${GPUS:-$($PYTHON -c "import torch; print(torch.cuda.device_count())")}
[ "$gpus" -ge 1 ] || { echo "bench_gpu.sh: no GPU" >&2; exit 2; }
mkdir -p "$out"
nvidia-smi -L > "$out/gpus.txt" 2>&1 || true
mpi() { "$here/mpirun.sh" "$@"; }
church=(--model arch:ddpm-church-256 --dtype float16)
has() { [[ " $parts " == *" $1 "* ]]; }
# SE2P on 2 GPUs against its 1-GPU baseline, and its tracing overhead (in parallel/tracing, and in two-gpu)
se2p_vs_baseline() { $PYTHON "$here/bench_parallel.py" --out "$out/parallel" --models arch:ddpm-church-256 \
    --cases se2p-10,se2p-20,se2p-100 --trace; }
se2p_tracing() { mpi 2 bench tracing se2p "${church[@]}" --steps 20 --device cuda --exchange swap \
    --repeats 15 --results "$out/tracing_se2p20_2gpu.json"; }      # 0.2 s runs: more pairs than the long ones
sizes=8,1024,65536,786432,8388608
staged_comm() { mpi 2 bench comm --device cuda --staging "$1" --sizes $sizes --out "$out/comm_mpi_$1.json"; }

if has tests; then   # graphs = eager bit for bit; pinned and shared staging between ranks on one GPU
    $PYTHON -m pytest -q -p no:cacheprovider tests/test_gpu.py > "$out/test_gpu.log" 2>&1 \
        || echo "bench_gpu.sh: tests/test_gpu.py failed (see $out/test_gpu.log); benchmarks go on" >&2
fi
if has model; then   # ε evaluation time per batch size, eager and from CUDA graphs
    for g in off on; do
        $PARDIFF bench model "${church[@]}" --batch 1,2,4,8,16,32 --cuda-graphs $g --repeats 20 \
            --out "$out/model_church_fp16_graphs-$g.json"
    done
    $PARDIFF bench model "${church[@]}" --batch 1,2,4,8,16,32 --cuda-graphs on --compile on --repeats 20 \
        --out "$out/model_church_fp16_graphs-on_compile-on.json"
    # what SE2P's own latent updates add to a step, host ahead or waiting (one GPU)
    $PYTHON "$here/probe_se2p_step.py" "$out/se2p_step_graphs.json"
    $PYTHON "$here/probe_se2p_step.py" "$out/se2p_step_compiled.json" --compile on
fi
if has comm; then    # one-way message time per size and path
    staged_comm pinned
    staged_comm shared
    staged_comm pageable
    # Open MPI's own host-to-host time, no GPU: what staging adds to it is the copies
    mpi 2 bench comm --device cpu --sizes $sizes --out "$out/comm_mpi_host.json"
    [ "$gpus" -ge 2 ] && mpi 2 bench comm --device cuda --transport nccl --sizes $sizes --out "$out/comm_nccl.json"
fi
if has tracing; then # wall time with the trace on and off
    $PARDIFF bench tracing sequential "${church[@]}" --sampler ddim --steps 50 --device cuda --repeats 5 \
        --results "$out/tracing_sequential_ddim50.json"
    $PARDIFF bench tracing sequential "${church[@]}" --sampler ddpm --steps 100 --device cuda --repeats 5 \
        --results "$out/tracing_sequential_ddpm100.json"
    $PARDIFF bench tracing sequential --model lfw-32 --sampler ddpm --steps 1000 --device cuda --repeats 3 \
        --results "$out/tracing_sequential_lfw32_ddpm1000.json"     # a small model: the host's share is largest
    $PARDIFF bench tracing parasolver "${church[@]}" --sampler ddim --steps 50 --subintervals 25 --precondition 5 \
        --window 25 --tol 0.005 --device cuda --repeats 5 --results "$out/tracing_parasolver_ddim50_1gpu.json"
    [ "$gpus" -ge 2 ] && se2p_tracing
fi
if has parallel; then  # parallel vs sequential, side by side, samples checked before any speedup
    gpu_list=1; [ "$gpus" -ge 2 ] && gpu_list=1,2
    $PYTHON "$here/bench_parallel.py" --out "$out/parallel" --models arch:ddpm-church-256,lfw-32,gmm \
        --cases ddpm-1000,ddim-50,ddim-25,dpmsolver-25 --gpus $gpu_list --trace
    $PYTHON "$here/bench_parallel.py" --out "$out/parallel-compiled" --models arch:ddpm-church-256,lfw-32 \
        --cases ddpm-1000 --gpus $gpu_list --compile on --timeout 900 --trace
    [ "$gpus" -ge 2 ] && se2p_vs_baseline
fi
# The two-GPU measurements alone, each part sized for one short lease of two GPUs (under 10 minutes):
# SE2P against its baseline and its tracing overhead; then the solvers' few-step cases on 1 and 2 GPUs.
if has two-gpu && [ "$gpus" -ge 2 ]; then
    se2p_vs_baseline
    se2p_tracing
    # the pinned path changed after the only 2-GPU comm measurement, and the shared one was built
    # after it: measure both here too
    has comm || { staged_comm pinned; staged_comm shared; }
fi
if has two-gpu-solvers && [ "$gpus" -ge 2 ]; then
    $PYTHON "$here/bench_parallel.py" --out "$out/parallel" --models arch:ddpm-church-256 \
        --cases ddim-25,ddim-50,dpmsolver-25 --gpus 1,2 --trace
    $PYTHON "$here/bench_parallel.py" --out "$out/parallel" --models lfw-32 --cases ddpm-1000 --gpus 1,2 --trace
fi
if has window; then    # ParaSolver's Figure 1: the window size p (both solvers) and ParaSolver's N, DDPM-1000, 1 GPU
    cases() { $PYTHON -c "import sys; sys.path.insert(0, '$here'); import bench_parallel as b; print(','.join(b.$1))"; }
    windows=$(cases WINDOW_CASES)
    subintervals=$(cases SUBINTERVAL_CASES)
    for model in arch:ddpm-church-256 lfw-32; do
        $PYTHON "$here/bench_parallel.py" --out "$out/window" --models $model --cases "$windows" --gpus 1 --trace
        $PYTHON "$here/bench_parallel.py" --out "$out/window" --models $model --cases "$subintervals" --gpus 1 \
            --algorithms parasolver --trace
    done
fi
echo "bench_gpu.sh: results in $out"
