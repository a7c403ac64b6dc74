#!/usr/bin/env bash
# The runs that made the shipped models pardiff/models/weights/lfw-32, lfw-32-cfg and digits-32-cfg
# (docs/reproduction.md):
# a short probe to time one step (after warm-up), then about SECONDS (default 300) of training at batch 256,
# bf16 autocast, on one GPU. Writes OUT/NAME/ (the model folder, NAME default lfw-32), OUT/train.json (the
# log) and OUT/probe.json; any further flags go to pardiff train (lfw-32-cfg: --classes; digits-32-cfg:
# --classes --data digits --clip-sample off; photos-32-cfg: --classes --data photos). STEPS=N in the
# environment: train N steps, no probe (SECONDS is then ignored).
#
#     launch/train_lfw.sh OUT [SECONDS [NAME [FLAGS...]]]
#     launch/train_lfw.sh OUT 300 lfw-32-cfg --classes
#     launch/train_lfw.sh OUT 300 digits-32-cfg --classes --data digits --clip-sample off
#     STEPS=3600 launch/train_lfw.sh OUT 0 photos-32-cfg --classes --data photos
set -euo pipefail
out=${1:?usage: launch/train_lfw.sh OUT [SECONDS [NAME [FLAGS...]]]}
seconds=${2:-300}
name=${3:-lfw-32}
shift $(( $# < 3 ? $# : 3 ))
py=${PYTHON:-python3}
mkdir -p "$out"
if [ -n "${STEPS:-}" ]; then
    steps=$STEPS       # known already: no probe (a probe's s/step can undershoot a long run's)
else
    $py -m pardiff train --steps 40 --warmup 10 --bf16 --device cuda "$@" --out "$out/probe-model" --log "$out/probe.json"
    rm -rf "$out/probe-model"
    steps=$($py -c "import json, sys; s = json.load(open(sys.argv[1]))['s_per_step_after_10']; \
print(min(8000, int($seconds / s) // 100 * 100))" "$out/probe.json")
fi
echo "training for $steps steps"
$py -m pardiff train --data lfw --size 32 --channels 64,128,128 --steps "$steps" --batch 256 --lr 5e-4 \
    --seed 0 --bf16 --device cuda "$@" --out "$out/$name" --log "$out/train.json"
