set -x
mkdir -p /root/r/card; trap 'cd /root && tar czf $OUT/res.tgz r' EXIT
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONUNBUFFERED=1 OMPI_MCA_hwloc_base_binding_policy=none
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > /root/r/gpu.txt
cd /root/r/card
run() { /usr/bin/time -f "%e s" python3 -m pardiff run sequential --model digits-32-cfg --sampler ddim --steps 50 --batch 256 --seed 0 --cuda-graphs off "$@"; }
t0=$(date +%s)
run --out uncond.npy 2>&1 | tail -1
for c in 0 1 2 3 4 5 6 7 8 9; do run --class-label $c --guidance 2 --out w2-c$c.npy 2>&1 | tail -1; done
for w in 1 4; do run --class-label 3 --guidance $w --out w$w-c3.npy 2>&1 | tail -1; done
echo "sampling $(( $(date +%s) - t0 )) s"
timeout 200 python3 -m pardiff eval uncond.npy w2-c*.npy w1-c3.npy w4-c3.npy --reference digits --report eval_digits.json > eval_digits.txt
timeout 120 python3 -m pardiff eval w1-c3.npy w2-c3.npy w4-c3.npy --reference digits:3 --report eval_digits3.json > eval_digits3.txt
python3 -c "
import numpy as np, glob
np.savez_compressed('first16.npz', **{f[:-4]: np.load(f)[:16].astype(np.float16) for f in sorted(glob.glob('*.npy'))})"
rm -f *.npy
echo "total $(( $(date +%s) - t0 )) s"
