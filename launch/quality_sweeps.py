#!/usr/bin/env python3
"""SE2P's quality experiments on a trained model (issue 7): the DDPM settings of Tables 1/4 (N = 10, 20),
N = 100 with small ρ (Figs. 2, 10), the mixing-parameter sweep (Fig. 26), the t_k + 1 variant (Fig. 27) and
P = 2 … 10 ranks (Fig. 28). On a GPU node it runs the same commands with many samples (--batch 1024; --batch 5120 --eval-batch 512
for the papers' 5 000).

Every setting is one ``pardiff run`` (the baseline ``sequential --sampler ddpm`` on 1 rank, SE2P under
``mpiexec -n P``) from the same --seed, so sample i of every setting starts from the same initial noise;
then one ``pardiff eval --reference REF`` over every set and --batch training images (--reference: lfw, the
default, digits for the models trained on the digits, photos for the colour model photos-32-cfg).
Groups (--groups):

- ``table4``: N ∈ {10, 20}: DDPM baseline, naive ablation, SE2P ρ ∈ {1.35, 1.55} (γ = 0.015; Tables 1/4,
              Figs. 7–9; ``launch/quality_study.py`` ran the same settings with 64 samples);

- ``n100``:   DDPM-100 baseline, naive ablation, SE2P ρ ∈ {0.25, 0.5} (γ = 0.015; the paper's §4 / Fig. 10);
- ``gamma``:  DDPM-20, ρ = 1.55, γ ∈ {0.00015, 0.0015, 0.015, 0.15, 0.5, 0.75} (Fig. 26; its γ = 0 is
              outside SE2P's 0 < γ ≤ 1 and its second "0.15" is read as 0.5), next to the baseline;
- ``tk1``:    DDPM-20, ρ = 1.55, γ = 0.015, ``--integration predictor-tk1`` beside SE2P (Fig. 27);
- ``procs``:  γ = 0.015, ρ = 1.35, P ranks (Fig. 28): P ∈ --procs-10 at N = 10, P ∈ --procs-20 at N = 20,
              P ∈ --procs-40 at N = 40 (Fig. 28's LD rows are N = 20 and 40: --model lfw-ldm);
- ``ld``:     the paper's LD settings (Fig. 3, Table 1's LD-20; meant for --model lfw-ldm): baseline, naive
              ablation and SE2P at N = 20 (ρ ∈ {1.35, 1.55}), 40 (ρ ∈ {1.20, 1.35}) and 80 (ρ ∈ {0.90, 1.10}).

A latent model's runs write latents; they are decoded through its autoencoder for every statistic and
grid (once, then ``pardiff eval`` on the images: what ``pardiff eval --decode`` does): ``--model lfw-ldm``
(memorised), ``--model digits-ldm --reference digits`` and ``--model photos-ldm --reference photos``
(generalise).

Runs whose samples already exist in --out-dir/samples are not run again (a sweep can be resumed or
extended). Writes to --out-dir: samples/TAG.npy, results.json (eval metrics, paired differences against
the baseline of the same N, wall times), table.md, grid_GROUP.png (rows: settings; columns: the first
samples, same noise), also into --img-dir.

    OMP_NUM_THREADS=1 python3 launch/quality_sweeps.py --out-dir traces/results/<date>_cpu_quality_sweeps --img-dir docs/img
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_study import (decoder_of, evaluate_sets, grid_png, log_sampling_call,  # noqa: E402  (paired
                           paired, sampling_device, sampling_log)   # statistics, grids, the sampling record, decoder)
from runner import pardiff, stop_children_on_sigterm  # noqa: E402

GAMMA = 0.015
GAMMAS_FIG26 = [0.00015, 0.0015, 0.015, 0.15, 0.5, 0.75]
GROUPS = ("table4", "n100", "gamma", "tk1", "procs", "ld")
LD_RHOS = {20: (1.35, 1.55), 40: (1.20, 1.35), 80: (0.90, 1.10)}      # the paper's Fig. 3


def se2p(gamma, rho, integration="predictor"):
    return ["se2p", "--gamma", gamma, "--rho", rho, "--integration", integration]


def settings(groups, procs10, procs20, procs40=()) -> list[dict]:
    """Every run: tag, group, N, ranks, run arguments. A tag shared by groups is run once."""
    base = ["sequential", "--sampler", "ddpm"]
    out = []

    def add(group, tag, n, ranks, args):
        out.append({"group": group, "tag": tag, "n": n, "ranks": ranks, "args": args})

    if "table4" in groups:
        for n in (10, 20):
            add("table4", f"ddpm-{n}-B", n, 1, base)
            add("table4", f"ddpm-{n}-Abl", n, 2, se2p(GAMMA, 1.0, "naive"))
            for rho in (1.35, 1.55):
                add("table4", f"ddpm-{n}-{rho:.2f}", n, 2, se2p(GAMMA, rho))
    if "n100" in groups:
        add("n100", "ddpm-100-B", 100, 1, base)
        add("n100", "ddpm-100-Abl", 100, 2, se2p(GAMMA, 1.0, "naive"))
        for rho in (0.25, 0.5):
            add("n100", f"ddpm-100-{rho:.2f}", 100, 2, se2p(GAMMA, rho))
    if "gamma" in groups:
        add("gamma", "ddpm-20-B", 20, 1, base)
        for g in GAMMAS_FIG26:
            add("gamma", f"ddpm-20-1.55-g{g:g}", 20, 2, se2p(g, 1.55))
    if "tk1" in groups:
        add("tk1", "ddpm-20-B", 20, 1, base)
        add("tk1", "ddpm-20-1.55-g0.015", 20, 2, se2p(GAMMA, 1.55))
        add("tk1", "ddpm-20-1.55-tk1", 20, 2, se2p(GAMMA, 1.55, "predictor-tk1"))
    if "procs" in groups:
        for n, procs in ((10, procs10), (20, procs20), (40, procs40)):
            if not procs:
                continue
            add("procs", f"ddpm-{n}-B", n, 1, base)
            for p in procs:
                add("procs", f"ddpm-{n}-1.35-P{p}", n, p, se2p(GAMMA, 1.35))
    if "ld" in groups:
        for n, rhos in LD_RHOS.items():
            add("ld", f"ddpm-{n}-B", n, 1, base)
            add("ld", f"ddpm-{n}-Abl", n, 2, se2p(GAMMA, 1.0, "naive"))
            for rho in rhos:
                add("ld", f"ddpm-{n}-{rho:.2f}", n, 2, se2p(GAMMA, rho))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--img-dir", help="also write the grids here (docs/img)")
    ap.add_argument("--groups", nargs="*", default=list(GROUPS))
    ap.add_argument("--procs-10", nargs="*", type=int, default=list(range(2, 11)))
    ap.add_argument("--procs-20", nargs="*", type=int, default=[2, 4, 10])
    ap.add_argument("--procs-40", nargs="*", type=int, default=[])
    ap.add_argument("--model", default="lfw-32")
    ap.add_argument("--reference", default="lfw", choices=("lfw", "digits", "photos"),
                    help="the data set the model was trained on: its images, feature net and classes for every metric")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--eval-batch", type=int, default=0,
                    help="pardiff run --eval-batch: most rows per network call (thousands of samples per run on one GPU)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--grid-cols", type=int, default=10)
    ap.add_argument("--no-run", action="store_true", help="only evaluate the samples already there")
    ap.add_argument("--sample-only", action="store_true",
                    help="sample and stop (e.g. on few CPU threads); a later call with --no-run evaluates")
    ap.add_argument("--jobs", type=int, default=1,
                    help="settings run at once (a GPU node: its ranks share the GPU; the results do not change)")
    args = ap.parse_args(argv)
    stop_children_on_sigterm()         # a time limit's SIGTERM stops the running jobs too
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1; got {args.jobs}")
    if args.sample_only and args.no_run:
        ap.error("--sample-only and --no-run together do nothing: give one")
    out_dir = Path(args.out_dir)
    samples_dir = out_dir / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.json"
    old = json.loads(results_path.read_text()) if results_path.exists() else {}
    wall_file = samples_dir / "run_wall_s.json"     # each run's wall time, kept across calls
    wall = {**old.get("meta", {}).get("run_wall_s", {}), **(json.loads(wall_file.read_text()) if wall_file.exists() else {})}
    # the flags every set in the folder was sampled with, and where (a --no-run call may be on another machine)
    flags = {"model": args.model, "batch": args.batch, "seed": args.seed}
    sampled = sampling_log(samples_dir, flags, ap.error)
    t0 = time.time()

    runs = settings(args.groups, args.procs_10, args.procs_20, args.procs_40)
    unique = {}
    for r in runs:
        unique.setdefault(r["tag"], r)
    todo = [r for tag, r in unique.items() if not (samples_dir / f"{tag}.npy").exists() and not args.no_run]

    if todo:
        log_sampling_call(samples_dir, sampled, flags, eval_batch=args.eval_batch, jobs=args.jobs,
                          settings=[r["tag"] for r in todo])
    lock = threading.Lock()

    def run(r):
        w = pardiff(r["ranks"], "run", *r["args"], "--model", args.model, "--steps", r["n"], "--seed", args.seed,
                    "--batch", args.batch, "--eval-batch", args.eval_batch, "--out", f"{r['tag']}.npy", cwd=samples_dir)
        with lock:                                  # kept as each run ends: a time limit keeps what ran
            wall[r["tag"]] = w
            wall_file.write_text(json.dumps(wall, indent=1) + "\n")
        print(f"{r['tag']:24s} P={r['ranks']:2d} {w:7.1f} s", flush=True)

    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(args.jobs) as pool:     # threads only wait on the subprocesses
        list(pool.map(run, todo))
    if args.sample_only:
        print(f"sampled {len(todo)} settings in {time.time() - t0:.0f} s; evaluate with --no-run")
        return 0

    # every sample set in the folder is evaluated (earlier groups stay in the report)
    tags = sorted(p.stem for p in samples_dir.glob("*.npy") if p.stem != "data")
    from pardiff.data import load_dataset
    data, _ = load_dataset(args.reference, 32)
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:args.batch]
    n_data = len(pick)
    samples = {t: np.load(samples_dir / f"{t}.npy") for t in tags}
    decoder = decoder_of(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        images_dir = samples_dir
        if decoder is not None:     # latents -> the images every statistic and grid is about, decoded once here
            from pardiff.quality import decode_latents
            samples = {t: decode_latents(t, x, decoder) for t, x in samples.items()}
            images_dir = Path(tmp)
            for t, x in samples.items():
                np.save(images_dir / f"{t}.npy", x)
        np.save(images_dir / "data.npy", data[pick].numpy())    # the training images: one evaluation, one feature net
        metrics, feature_net, per_image = evaluate_sets(tags + ["data"], images_dir, args.reference)
    diffs = {}
    for t in tags:                  # per image against the baseline: attributes, the class and (photos) NIQE
        n = t.split("-")[1]
        if not t.endswith("-B") and f"ddpm-{n}-B" in samples:
            diffs[t] = paired(samples[t], samples[f"ddpm-{n}-B"], per_image[t], per_image[f"ddpm-{n}-B"])

    groups = {}
    # the groups asked for now and those of an earlier call on this folder (not every group whose tags match:
    # table4's N = 20 tags are also the ld group's)
    wanted = set(args.groups) | set(old.get("meta", {}).get("groups", {}))
    for r in settings([g for g in GROUPS if g in wanted], args.procs_10, args.procs_20, args.procs_40):
        if r["tag"] in samples:
            groups.setdefault(r["group"], [])
            if r["tag"] not in groups[r["group"]]:
                groups[r["group"]].append(r["tag"])
    groups = {g: ts for g, ts in groups.items() if any(not t.endswith("-B") for t in ts)}   # groups actually run
    prefix = "" if args.model == "lfw-32" else Path(args.model).name.replace(":", "-") + "_"   # lfw-32's names stay
    img_dirs = [out_dir] + ([Path(args.img_dir)] if args.img_dir else [])
    for group, gtags in groups.items():
        rows = [samples[t] for t in gtags]
        for d in img_dirs:
            d.mkdir(parents=True, exist_ok=True)
            grid_png(d / f"quality_sweeps_{prefix}{group}.png", rows, min(args.grid_cols, args.batch))

    meta = {"model": args.model, "reference": args.reference, "batch": args.batch,
            "decoded_with": args.model if decoder is not None else None,
            "seed": args.seed, "groups": groups,
            "device": "; ".join(dict.fromkeys(c["device"] for c in sampled["calls"])) or sampling_device(),
            "sampled_on": sampled["calls"], "eval_device": f"cpu ({platform.machine()}, {os.cpu_count()} cores)",
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "python": platform.python_version(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "wall_s_this_call": time.time() - t0, "run_wall_s": wall, "feature_net": feature_net,
            "data_row": f"{n_data} of the {len(data)} training images (seed 0); its KID and nearest-image distance "
                        "compare a subset with a set that contains it"}
    results_path.write_text(json.dumps({"meta": meta, "metrics": metrics, "paired_vs_baseline": diffs},
                                       indent=1) + "\n")
    table = format_tables(groups, metrics, diffs, args.batch, args.reference)
    (out_dir / "table.md").write_text(table)
    print(table)
    return 0


def format_tables(groups, metrics, diffs, batch, reference="lfw") -> str:
    """LFW: the face rate and NIQE-LFW; digits: the rarest and commonest digit's share (the net's
    calls), no NIQE; photos: colourfulness, the rarest and commonest photo's share and NIQE-photos."""
    colour = reference == "photos"
    attrs = ("brightness", "contrast", "sharpness") + (("colourfulness",) if colour else ()) + ("saturated",)
    faces = reference == "lfw"
    niqe = {"lfw": ("niqe_lfw", "NIQE-LFW"), "photos": ("niqe_photos", "NIQE-photos")}.get(reference)
    share_of = {"digits": "digit", "photos": "photo"}.get(reference)
    lines = [f"{batch} samples per setting, the same initial noises in every setting. Means ± standard error; "
             "KID ± its spread over random halves; paired Δ = setting − baseline of the same N, per image."]
    for group, tags in groups.items():
        columns = ["setting", *attrs, "KID", "face rate" if faces else f"{share_of} share (rarest / commonest)",
                   "nearest train RMS"] + ([f"{niqe[1]} per image (set ± spread over halves)"] if niqe else [])
        lines += ["", f"### {group}", "", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
        for t in tags + (["data"] if group == list(groups)[-1] else []):
            m = metrics[t]
            cells = [t] + [f"{m[a]['mean']:.4f} ± {m[a]['se']:.4f}" for a in attrs]
            cells.append(f"{m['kid']:.3f} ± {m['kid_subset_std']:.3f}")
            if faces:
                cells.append(f"{m['face_rate']:.2f}")
            else:
                share = np.asarray(m["class_counts"]) / sum(m["class_counts"])
                cells.append(f"{share.min():.3f} / {share.max():.3f}")
            cells.append(f"{m['nearest_train_rms']:.3f}")
            if niqe:
                q = m[niqe[0]]
                cells.append(f"{q['mean']:.2f} ± {q['se']:.2f} ({q['set']:.2f} ± {q['set_subset_std']:.2f})")
            lines.append("| " + " | ".join(cells) + " |")
        paired_tags = [t for t in tags if t in diffs]
        if paired_tags:
            columns = ["setting"] + [f"Δ {a}" for a in attrs] + ([f"Δ {niqe[1]}"] if niqe else []) \
                + ["RMS to baseline (median)", "face / non-face changed" if faces else f"{share_of} changed"]
            lines += ["", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
            for t in paired_tags:
                d = diffs[t]
                cells = [t] + [f"{d[a]['mean']:+.4f} ± {d[a]['se']:.4f}" for a in attrs]
                if niqe:
                    cells.append(f"{d[niqe[0]]['mean']:+.2f} ± {d[niqe[0]]['se']:.2f}")
                cells += [f"{d['rms_to_baseline']['mean']:.3f} ({d['rms_to_baseline']['median']:.3f})",
                          f"{d['class_changed']} of {batch}"]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
