#!/usr/bin/env bash
# Launch pardiff with one MPI rank per GPU, under Open MPI's mpirun or MPICH/Hydra's mpiexec.
#
#   launch/mpirun.sh NP pardiff-arguments...
#   launch/mpirun.sh 2 run se2p --model arch:ddpm-church-256 --dtype float16 --steps 10 --trace se2p.h5
#
# Environment it reads (all optional):
#   MPIEXEC   the launcher (default: mpirun, else mpiexec, from PATH)
#   HOSTFILE  a hostfile for multi-node runs (ranks are placed node by node, one per GPU)
#   PARDIFF   the command that runs pardiff (default: pardiff; e.g. "/path/to/python3 -m pardiff":
#             give the interpreter by absolute path, Open MPI puts its own bin/ first on PATH)
# Environment it sets for every rank:
#   OMP_NUM_THREADS=4 (unless set)   CPU threads per rank; pardiff otherwise divides the cores
#   CUDA_DEVICE_ORDER=PCI_BUS_ID     GPU numbering as nvidia-smi shows it; rank r takes GPU local_rank mod count
#   PYTHONUNBUFFERED=1               ranks' output arrives as it is printed
#   NCCL_NVLS_ENABLE=0               NVLink multicast off (shared machines: see docs/hpc.md)
set -euo pipefail
np=${1:?usage: launch/mpirun.sh NP pardiff-arguments...}
shift
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
export CUDA_DEVICE_ORDER=PCI_BUS_ID
export PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
vars=(OMP_NUM_THREADS CUDA_DEVICE_ORDER PYTHONUNBUFFERED NCCL_NVLS_ENABLE)
launcher=${MPIEXEC:-$(command -v mpirun || command -v mpiexec || true)}
[ -n "$launcher" ] || { echo "launch/mpirun.sh: no mpirun or mpiexec on PATH" >&2; exit 2; }
read -r -a pardiff <<< "${PARDIFF:-pardiff}"
args=(-n "$np")
if "$launcher" --version 2>&1 | grep -qiE "open mpi|openrte|open-rte"; then
    args+=(--bind-to none --map-by slot)             # ranks are placed node by node; no core pinning
    for v in "${vars[@]}"; do args+=(-x "$v"); done
    [ "$(id -u)" = 0 ] && args+=(--allow-run-as-root)
    [ -n "${HOSTFILE:-}" ] && args+=(--hostfile "$HOSTFILE")
else                                                  # MPICH / Hydra, Intel MPI
    args+=(-genvlist "$(IFS=,; echo "${vars[*]}")")
    [ -n "${HOSTFILE:-}" ] && args+=(-f "$HOSTFILE")
fi
exec "$launcher" "${args[@]}" "${pardiff[@]}" "$@"
