#!/usr/bin/env bash
# Two versions of pardiff side by side on one GPU, runs alternating: ParaDiGMS and ParaSolver
# with the settings of a launch/bench_parallel.py case (CASE, default ddpm-1000), untraced:
#
#   git archive REV pardiff | tar -x -C OLD          # the older version, as a folder
#   launch/ab_versions.sh OLD OUT REPS MODEL...       # from the repository root (the newer version)
#
# Each run's report lands in OUT as MODEL_ALGO_{old,new}_REP.json, with its sample (.npy): the
# two versions should give the same samples where a change was meant not to change them.
# DEVICE=cpu runs it without a GPU (a check of the script, not a measurement).
set -uo pipefail
export PARDIFF="${PYTHON:-python3} -m pardiff"     # -m: each version imports pardiff from its folder
old=$(cd "${1:?usage: launch/ab_versions.sh OLD OUT REPS MODEL...}" && pwd); out=$2; reps=$3; shift 3
root=$(pwd); here=$(cd "$(dirname "$0")" && pwd)
[ -d "$old/pardiff" ] || { echo "ab_versions.sh: $old has no pardiff/" >&2; exit 2; }
mkdir -p "$out"; out=$(cd "$out" && pwd)
flags() {   # the case's sampler, steps and ALGO's flags, from bench_parallel.py's CASES
    "${PYTHON:-python3}" -c "import sys; sys.path.insert(0, sys.argv[1]); from bench_parallel import case_flags
print(*case_flags(sys.argv[2], sys.argv[3])[1:])" "$here" "${CASE:-ddpm-1000}" "$1"
}
for model in "$@"; do
  dtype=(); [[ $model == arch:* ]] && dtype=(--dtype float16)
  for r in $(seq "$reps"); do
    for version in old new; do
      dir=$root; [ $version = old ] && dir=$old      # `python -m pardiff` imports from the working directory
      for alg in paradigms parasolver; do
        read -r -a params <<< "$(flags $alg)"
        name=$out/${model/:/_}_${alg}_${version}_$r
        (cd "$dir" && timeout 300 "$here/mpirun.sh" 1 run $alg --model "$model" "${dtype[@]}" "${params[@]}" \
            --seed 0 --batch 1 --device "${DEVICE:-cuda}" --out "$name.npy" --report "$name.json" \
            > "$name.log" 2>&1) || { echo "$name: failed (see $name.log)"; continue; }
        python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(sys.argv[2], 'wall', round(d['wall_s'], 4), 's, iterations', d.get('iterations'), ', nfe', d['nfe'])" \
            "$name.json" "$model $alg $version $r"
      done
    done
  done
done
