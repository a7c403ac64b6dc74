set -e
for w in 1 2 4 7.5; do for n in 10 20; do
  OMP_NUM_THREADS=1 mpiexec -n 1 python -m pardiff fit-iia --solver ddim-cfg --guidance $w --model DIGITS32CFG_NOCLIP --steps $n --fine 3 --batch 16 --seed 0 --out w$w-$n.h5 --report w$w-$n.json
  OMP_NUM_THREADS=1 mpiexec -n 1 python -m pardiff fit-iia --solver dpmsolver++ --guidance $w --model DIGITS32CFG_NOCLIP --steps $n --fine 3 --batch 16 --seed 0 --out d$w-$n.h5 --report d$w-$n.json
done; done
