#!/usr/bin/env python3
"""IIA reproduction study on `gmm`: residual and sample error vs NFE for each IIA sampler and its base.

For each solver and NFE budget: fit the step sizes (``pardiff fit-iia`` on --ranks ranks over
|B| = --fit-batch noises), sample --test-batch other noises with the base sampler and the IIA
sampler, and measure the RMS distance of each sample to the probability-flow solution from the
same initial noise (DDIM with --reference-steps steps, 1000 by default): over all test samples, their
median, and how many end more than --far away (on another image, not merely less accurate). With --eval,
also ``pardiff eval --reference lfw`` (or --eval-reference) of every sample set (KID, NIQE-LFW, sharpness, the
rate of samples of the class a classifier expects: the FID-like view). On a latent model (lfw-ldm, digits-ldm) every
error, grid and statistic is of the decoded images, what a user sees; the fit itself works on latents.
Writes results.json and table.md to --out-dir. --nfe keeps only some NFE budgets. The guided solvers (ddim-cfg:
IIA-DDIM's Eq. 8; dpmsolver++-cfg: IIA-DPM-Solver++ on the guided ε̈) need a class-conditional model (gmm, lfw-32-cfg, digits-32-cfg):
their test samples are drawn for --class-label with guidance --guidance, their reference is guided DDIM-1000.

    python3 launch/iia_study.py --out-dir traces/results/<date>_cpu_iia
    python3 launch/iia_study.py --model lfw-32 --solvers ddim --fit-batch 32 --test-batch 16 --b-sweep --out-dir DIR   # bare --b-sweep: no |B| sweep
    python3 launch/iia_study.py --model lfw-32-cfg --solvers ddim-cfg --class-label 1 --guidance 2 --b-sweep --eval --out-dir DIR
    python3 launch/iia_study.py --model digits-32-cfg --solvers ddim-cfg --class-label 3 --guidance 4 --b-sweep --eval \
        --eval-reference digits:3 --out-dir DIR
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_study import decoder_of, grid_png, sampling_device  # noqa: E402  (the grids, device line and latent
# models' decoder of the quality studies)
from runner import pardiff, stop_children_on_sigterm  # noqa: E402

# solver -> (IIA sampler, base sampler, steps per NFE budget, extra flags); NFE = model evaluations per sample
# (the guided ε̈ is one evaluation of the guided model: two network batches in one call)
SOLVERS = {
    "ddim": ("iia-ddim", "ddim", {10: 10, 20: 20, 30: 30, 40: 40}, []),
    "ddim-1q": ("iia-ddim", "ddim", {10: 10, 20: 20, 30: 30, 40: 40}, ["--quantities", "1"]),
    "ddim-cfg": ("iia-ddim-cfg", "ddim", {10: 10, 20: 20, 30: 30, 40: 40}, []),
    "dpmsolver++": ("iia-dpmsolver++", "dpmsolver", {10: 10, 20: 20, 30: 30, 40: 40}, []),
    "dpmsolver++-cfg": ("iia-dpmsolver++", "dpmsolver", {10: 10, 20: 20, 30: 30, 40: 40}, []),
    "biia-edm": ("biia-edm", "edm", {11: 6, 19: 10, 29: 15, 39: 20}, []),
    "iia-edm": ("iia-edm", "edm", {11: 6, 19: 10, 29: 15, 39: 20}, []),
}
GUIDED = ("ddim-cfg", "dpmsolver++-cfg")   # sampled and fitted with --guidance (the fit averages over the classes)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--model", default="gmm")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--fit-batch", type=int, default=32, help="|B| (default %(default)s)")
    ap.add_argument("--fine", type=int, default=3, help="M (default %(default)s, the paper's)")
    ap.add_argument("--test-batch", type=int, default=32)
    ap.add_argument("--solvers", nargs="*", default=list(SOLVERS))
    ap.add_argument("--b-sweep", nargs="*", type=int, default=[8, 16, 32, 64, 128],
                    help="|B| values for IIA-DDIM at NFE 10 (how the fit generalises to other noises); "
                         "the flag with no values skips that sweep")
    ap.add_argument("--nfe", nargs="*", type=int, help="only these NFE budgets (default: all of each solver's)")
    ap.add_argument("--reference-steps", type=int, default=1000, help="DDIM steps of the reference (default 1000)")
    ap.add_argument("--keep-samples", action="store_true", help="keep the samples (.npy) in --out-dir/samples")
    ap.add_argument("--far", type=float, default=0.15,
                    help="a test sample whose RMS error exceeds this ended on another image (default %(default)s)")
    ap.add_argument("--guidance", type=float, default=2.0, help="w of the guided solvers (default %(default)s)")
    ap.add_argument("--class-label", type=int, default=3,
                    help="the class the guided test samples are drawn for (default %(default)s, a gmm component; "
                         "lfw-32-cfg: 1 face, 0 non-face)")
    ap.add_argument("--eval", action="store_true",
                    help="also pardiff eval every sample set against --eval-reference (a model of its images)")
    ap.add_argument("--eval-reference", default="lfw",
                    help="--eval's reference (default %(default)s; lfw-faces for samples guided to the face class, "
                         "digits:D for digits guided to D)")
    args = ap.parse_args(argv)
    stop_children_on_sigterm()         # a time limit's SIGTERM stops the running jobs too
    if shutil.which("mpiexec") is None:
        raise SystemExit("no mpiexec on PATH (pip install -e '.[mpich]')")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="iia-study-"))
    test = ["--model", args.model, "--seed", 5, "--batch", args.test_batch]
    guided = ["--guidance", args.guidance, "--class-label", args.class_label]

    t0 = time.time()
    ref_steps = args.reference_steps
    decoder = decoder_of(args.model)

    images = work / "images"            # a latent model's sets decoded, once: errors, eval and the grid read them

    def load(f: str) -> np.ndarray:
        """A sample set as images: a latent model's latents are decoded."""
        if decoder is None:
            return np.load(work / f)
        if not (images / f).exists():
            from pardiff.quality import decode_latents
            images.mkdir(exist_ok=True)
            np.save(images / f, decode_latents(f, np.load(work / f), decoder))
        return np.load(images / f)
    refs = {}                           # guided? -> the reference samples; each computed only if a solver needs it
    if any(name not in GUIDED for name in args.solvers) or args.b_sweep:
        pardiff(1, "run", "sequential", "--sampler", "ddim", "--steps", ref_steps, *test, "--out", "ref.npy", cwd=work)
        refs[False] = load("ref.npy")
    if any(name in GUIDED for name in args.solvers):
        pardiff(1, "run", "sequential", "--sampler", "ddim", "--steps", ref_steps, *test, *guided,
                "--out", "ref-cfg.npy", cwd=work)
        refs[True] = load("ref-cfg.npy")

    def errors(f, g) -> dict:
        """RMS error to the reference over all samples, its per-sample median, and the samples beyond --far."""
        per = np.sqrt(((load(f) - refs[g]) ** 2).reshape(len(refs[g]), -1).mean(1))
        return {"all": float(np.sqrt((per ** 2).mean())), "median": float(np.median(per)),
                "far": int((per > args.far).sum())}

    rows, sweep = [], []

    def save(quality: dict) -> None:
        """results.json as far as the study got (rewritten after every row: a time limit keeps what ran)."""
        meta = {"model": args.model, "ranks": args.ranks, "fit_batch": args.fit_batch, "fine": args.fine,
                "test_batch": args.test_batch, "test_seed": 5, "fit_seed": 0, "guidance": args.guidance,
                "class_label": args.class_label, "reference": f"ddim, {ref_steps} steps, same initial noise",
                "device": sampling_device(), "far": args.far,
                "error_of": "decoded images" if decoder is not None else "samples", "python": platform.python_version(),
                "date": time.strftime("%Y-%m-%d"), "wall_s": time.time() - t0}
        (out_dir / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "b_sweep": sweep,
                                                           "quality": quality}, indent=1))

    for name in args.solvers:
        sampler, base, budgets, extra = SOLVERS[name]
        solver = {"ddim-1q": "ddim", "dpmsolver++-cfg": "dpmsolver++"}.get(name, name)
        g = name in GUIDED
        flags = [*test, *(guided if g else [])]
        fit_flags = [*extra, *(["--guidance", args.guidance] if g else [])]
        for nfe, steps in budgets.items():
            if args.nfe and nfe not in args.nfe:
                continue
            tag = f"{name}-{steps}"
            pardiff(args.ranks, "fit-iia", "--solver", solver, *fit_flags, "--model", args.model, "--steps", steps,
                    "--fine", args.fine, "--batch", args.fit_batch, "--seed", 0, "--out", f"{tag}.h5",
                    "--report", f"{tag}.json", cwd=work)
            fit = json.loads((work / f"{tag}.json").read_text())
            pardiff(1, "run", "sequential", "--sampler", base, "--steps", steps, *flags, "--out", f"{tag}-base.npy",
                    cwd=work)
            pardiff(1, "run", "sequential", "--sampler", sampler, "--coeffs", f"{tag}.h5", "--steps", steps, *flags,
                    "--out", f"{tag}-iia.npy", cwd=work)
            eb, ei = errors(f"{tag}-base.npy", g), errors(f"{tag}-iia.npy", g)
            row = {"solver": name, "sampler": sampler, "base": base, "nfe": nfe, "steps": steps,
                   "residual_base": fit["residual_base"], "residual_fitted": fit["residual_fitted"],
                   "error_base": eb["all"], "error_iia": ei["all"], "error_base_median": eb["median"],
                   "error_iia_median": ei["median"], "far_base": eb["far"], "far_iia": ei["far"],
                   "fit_wall_s": fit["wall_s"], "coefficients": fit["coefficients"]}
            rows.append(row)
            save({})
            print(f"{name:12s} NFE {nfe:3d}: residual {row['residual_base']:.3g} -> {row['residual_fitted']:.3g}, "
                  f"error {row['error_base']:.4f} -> {row['error_iia']:.4f}", flush=True)

    for q in (2, 1):
        for B in args.b_sweep:
            tag = f"sweep-{q}-{B}"
            pardiff(args.ranks, "fit-iia", "--solver", "ddim", "--quantities", q, "--model", args.model, "--steps", 10,
                    "--fine", args.fine, "--batch", B, "--seed", 0, "--out", f"{tag}.h5", "--report", f"{tag}.json",
                    cwd=work)
            fit = json.loads((work / f"{tag}.json").read_text())
            pardiff(1, "run", "sequential", "--sampler", "iia-ddim", "--coeffs", f"{tag}.h5", "--steps", 10, *test,
                    "--out", f"{tag}.npy", cwd=work)
            sweep.append({"quantities": q, "B": B, "residual_base": fit["residual_base"],
                          "residual_fitted": fit["residual_fitted"], "error_iia": errors(f"{tag}.npy", False)["all"]})
            print(f"IIA-DDIM q={q} |B|={B:4d}: residual {fit['residual_fitted']:.3g}, error {sweep[-1]['error_iia']:.4f}",
                  flush=True)

    quality = {}
    if args.eval:
        sets = [f for g, f in ((False, "ref.npy"), (True, "ref-cfg.npy")) if g in refs] + \
            [f"{r['solver']}-{r['steps']}-{k}.npy" for r in rows for k in ("base", "iia")]
        where = work
        if decoder is not None:         # the images errors() decoded (what pardiff eval --decode would do)
            for f in sets:
                load(f)
            where = images
        pardiff(1, "eval", *dict.fromkeys(sets), "--reference", args.eval_reference, "--report", "eval.json", cwd=where)
        files = json.loads((where / "eval.json").read_text())["files"]
        # the class rate: of faces (lfw) or of the digit D (digits:D); NIQE-LFW only against LFW
        quality = {f[:-4]: {"kid": m["kid"], "kid_subset_std": m["kid_subset_std"], "sharpness": m["sharpness"]["mean"],
                            **{k: m[k] for k in ("face_rate", "class_rate") if k in m},
                            **({"niqe_lfw": m["niqe_lfw"]["mean"], "niqe_lfw_se": m["niqe_lfw"]["se"],
                                "niqe_lfw_set": m["niqe_lfw"]["set"]} if "niqe_lfw" in m else {})}
                   for f, m in files.items()}

    save(quality)
    n = args.test_batch

    def label(r):
        return r["sampler"] + {"ddim-1q": " (1 quantity)", "dpmsolver++-cfg": " (guided)"}.get(r["solver"], "")

    lines = [f"RMS error to the reference over the {n} test samples (median of the per-sample errors; "
             f"samples further than {args.far} from it)", "",
             "| solver | NFE | steps | residual base | residual IIA | RMS error base | RMS error IIA |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {label(r)} vs {r['base']} "
                     f"| {r['nfe']} | {r['steps']} | {r['residual_base']:.3g} | {r['residual_fitted']:.3g} "
                     f"| {r['error_base']:.4f} ({r['error_base_median']:.4f}; {r['far_base']} of {n}) "
                     f"| {r['error_iia']:.4f} ({r['error_iia_median']:.4f}; {r['far_iia']} of {n}) |")
    if quality:
        q = quality
        first = q.get("ref", q.get("ref-cfg"))
        rate = next((k for k in ("face_rate", "class_rate") if k in first), None)
        niqe = "niqe_lfw" in first

        def summary(m) -> str:
            return ", ".join([f"KID {m['kid']:.3f}"] + ([f"NIQE-LFW {m['niqe_lfw']:.2f} ({m['niqe_lfw_set']:.2f})"]
                             if niqe else []) + [f"sharpness {m['sharpness']:.4f}"]
                             + ([f"{rate.replace('_', ' ')} {m[rate]:.3f}"] if rate else []))

        refs_line = "; ".join(f"the {what}reference: " + summary(q[k])
                              for k, what in (("ref", ""), ("ref-cfg", "guided ")) if k in q)
        lines += ["", f"pardiff eval --reference {args.eval_reference} of each set (KID ± spread over halves"
                  + ("; NIQE-LFW per image ± SE (set)" if niqe else "") + "); " + refs_line, "",
                  "| solver | NFE | KID base | KID IIA | " + ("NIQE-LFW base | NIQE-LFW IIA | " if niqe else "")
                  + "sharpness base / IIA |" + (f" {rate.replace('_', ' ')} base / IIA |" if rate else ""),
                  "|---|---|---|---|" + ("---|---|" if niqe else "") + "---|" + ("---|" if rate else "")]
        for r in rows:
            b, i = q[f"{r['solver']}-{r['steps']}-base"], q[f"{r['solver']}-{r['steps']}-iia"]
            cells = [label(r) + f" vs {r['base']}", str(r["nfe"]), f"{b['kid']:.3f} ± {b['kid_subset_std']:.3f}",
                     f"{i['kid']:.3f} ± {i['kid_subset_std']:.3f}"]
            if niqe:
                cells += [f"{m['niqe_lfw']:.2f} ± {m['niqe_lfw_se']:.2f} ({m['niqe_lfw_set']:.2f})" for m in (b, i)]
            cells.append(f"{b['sharpness']:.4f} / {i['sharpness']:.4f}")
            if rate:
                cells.append(f"{b[rate]:.3f} / {i[rate]:.3f}")
            lines.append("| " + " | ".join(cells) + " |")
    if sweep:
        base10 = next((r["error_base"] for r in rows if r["solver"] == "ddim" and r["nfe"] == 10), None)
        lines += ["", f"IIA-DDIM at NFE 10 against |B| (DDIM-10's RMS error: {base10})", "",
                  "| quantities | \\|B\\| | residual IIA (on B) | RMS error IIA (other noises) |", "|---|---|---|---|"]
        lines += [f"| {s['quantities']} | {s['B']} | {s['residual_fitted']:.3g} | {s['error_iia']:.4f} |" for s in sweep]
    (out_dir / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.keep_samples:
        (out_dir / "samples").mkdir(exist_ok=True)
        for f in work.glob("*.npy"):
            shutil.copy(f, out_dir / "samples" / f.name)
        if rows and next(iter(refs.values())).shape[1] == 1:       # grayscale: a grid of the first solver
            first = [r for r in rows if r["solver"] == rows[0]["solver"]]
            grid = [refs[rows[0]["solver"] in GUIDED]]                 # the first solver's own reference
            for r in first:
                tag = f"{r['solver']}-{r['steps']}"
                grid += [load(f"{tag}-base.npy"), load(f"{tag}-iia.npy")]
            grid_png(out_dir / "grid.png", grid, min(8, args.test_batch))     # rows: reference, then base / IIA per NFE
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
