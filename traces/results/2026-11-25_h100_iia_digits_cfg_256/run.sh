set -x
mkdir -p /root/r; trap 'cd /root && tar czf $OUT/res.tgz r' EXIT
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONUNBUFFERED=1 OMPI_MCA_hwloc_base_binding_policy=none
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > /root/r/gpu.txt
t0=$(date +%s)
timeout 500 python3 launch/iia_study.py --model digits-32-cfg --solvers ddim-cfg dpmsolver++-cfg --nfe 10 20 \
  --class-label 3 --guidance 4 --ranks 1 --fit-batch 16 --test-batch 256 --b-sweep --eval --eval-reference digits:3 \
  --out-dir /root/r/study256 2>&1 | tee /root/r/study256.log
echo "rc ${PIPESTATUS[0]} after $(( $(date +%s) - t0 )) s" >> /root/r/study256.log
