"""The ``pardiff`` command line: run | trace | models."""
from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .config import ALGORITHMS, RunConfig

# Launchers tell each process its rank; used to print argument errors once, before MPI starts.
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")


def _launcher_rank() -> int:
    for var in _RANK_VARS:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        if _launcher_rank() == 0:
            self.print_usage(sys.stderr)
            sys.stderr.write(f"pardiff: error: {message}\n")
        raise SystemExit(2)


def _add_common_flags(p: argparse.ArgumentParser) -> None:
    d = RunConfig(algorithm="se2p")
    common = p.add_argument_group("common")
    common.add_argument("--model", default=d.model, help="gmm (default), gmm:CxHxW, arch:<name>, a diffusers "
                        "folder or hub id (see `pardiff models`)")
    common.add_argument("--steps", type=int, default=d.steps, help="number of sampling steps N (default %(default)s)")
    common.add_argument("--seed", type=int, default=d.seed, help="run seed (default %(default)s)")
    common.add_argument("--batch", type=int, default=d.batch, help="samples per run (default %(default)s)")
    common.add_argument("--class-label", type=int, default=d.class_label,
                        help="class for class-conditional models; -1 = unconditional (default)")
    common.add_argument("--device", default=d.device, help="auto | cpu | cuda (rank r takes GPU local_rank mod count)")
    common.add_argument("--dtype", default=d.dtype, help="network dtype: float32 | float16 | bfloat16")
    common.add_argument("--out", help="write the samples: FILE.npy (latents) or FILE.png (image grid)")
    common.add_argument("--trace", help="record every compute and message to FILE.h5")
    common.add_argument("--report", help="write a JSON report (wall time, NFE, per-rank totals)")
    common.add_argument("--guidance", type=float, default=d.guidance,
                        help="classifier-free guidance scale w (class-conditional models, with --class-label)")


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    d = RunConfig(algorithm="se2p")
    _add_common_flags(p)
    seq = p.add_argument_group("sequential, parasolver, paradigms")
    seq.add_argument("--sampler", default=d.sampler,
                     help="ddpm (default) | ddim | dpmsolver (DPM-Solver++ 2M) | edm | iia-ddim | iia-ddim-cfg | "
                          "iia-dpmsolver++ | biia-edm | iia-edm (docs/algorithms/iia.md)")
    seq.add_argument("--coeffs", help="IIA step sizes (FILE.h5 from pardiff fit-iia) for the iia-* samplers")
    par = p.add_argument_group("parasolver, paradigms (docs/algorithms/parasolver.md)")
    par.add_argument("--subintervals", type=int, default=d.subintervals,
                     help="parasolver: N subintervals, dividing --steps (default: one per step)")
    par.add_argument("--precondition", type=int, default=d.precondition,
                     help="parasolver: M preconditioning steps, 0 = start from noise (default %(default)s)")
    par.add_argument("--window", type=int, default=d.window, help="window size p (default %(default)s)")
    par.add_argument("--tol", type=float, default=d.tol, help="tolerance δ of the stopping rule (default %(default)s)")
    par.add_argument("--clean-estimate", default=d.clean_estimate,
                     help="parasolver line 8: x̂_0 from the window's last subproblem's first step (first, the "
                          "paper) or last step (last, the authors' code)")
    se2p = p.add_argument_group("se2p (docs/algorithms/se2p.md)")
    se2p.add_argument("--gamma", type=float, default=d.gamma, help="mixing parameter γ in (0, 1] (default %(default)s)")
    se2p.add_argument("--rho", type=float, default=d.rho, help="variance scaling ρ > 0 (default %(default)s)")
    se2p.add_argument("--integration", default=d.integration,
                      help="predictor (the paper's method) | naive (the §4.5 ablation) | predictor-tk1 (Fig. 27)")
    se2p.add_argument("--mu-pred", default=d.mu_pred,
                      help="ho (Ho et al. Eq. 7, default) | as-printed (the typeset line 7 / line 8)")
    se2p.add_argument("--seed-sharing", default=d.seed_sharing,
                      help="message (Proc 0 sends each step's seed, default) | precomputed (App. B note 3 (ii))")
    se2p.add_argument("--return-latent", default=d.return_latent,
                      help="on-grid (Proc P-1's final latent, default) | proc0 (Proc 0's own)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pardiff", description="Parallel diffusion sampling as traced MPI programs.")
    parser.add_argument("--version", action="version", version=f"pardiff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run an algorithm on the ranks of this MPI job",
                         description="Run ALGO on every rank: mpiexec -n P pardiff run ALGO [flags]")
    run.add_argument("algorithm", metavar="ALGO", help=" | ".join(ALGORITHMS))
    _add_run_flags(run)

    fit = sub.add_parser("fit-iia", help="fit IIA step sizes by MMSE, the set B split over the ranks",
                         description="mpiexec -n P pardiff fit-iia --solver ddim --steps 10 --fine 4 --batch 8 "
                                     "--out coeffs.h5 (docs/algorithms/iia.md)")
    d = RunConfig(algorithm="fit-iia")
    fit.add_argument("--solver", default=d.solver, help="ddim (default) | ddim-cfg | dpmsolver++ | biia-edm | iia-edm")
    fit.add_argument("--fine", type=int, default=d.fine, help="M fine-grained steps per step (default %(default)s)")
    fit.add_argument("--history", type=int, default=d.history,
                     help="r: earlier steps whose quantities BIIA-EDM / IIA-EDM combine (default %(default)s)")
    fit.add_argument("--trajectory", default=d.trajectory,
                     help="iia (default): fit step i at the states the IIA sampler reaches with the step sizes "
                          "fitted before it; base: at the base sampler's states (docs/algorithms/iia.md)")
    fit.add_argument("--quantities", type=int, default=d.quantities,
                     help="IIA-DDIM: 2 (Eq. 6, default) or 1 (Eq. 25)")
    _add_common_flags(fit)
    fit.set_defaults(algorithm="fit-iia", batch=16)        # |B|: the paper averages (7) over 16 noises

    trace = sub.add_parser("trace", help="inspect a trace file")
    tsub = trace.add_subparsers(dest="trace_command", required=True, parser_class=_Parser)
    summary = tsub.add_parser("summary", help="per rank and label: compute, communication, waiting, bytes")
    summary.add_argument("file")
    plot = tsub.add_parser("plot", help="a timeline PNG, one lane per rank")
    plot.add_argument("file")
    plot.add_argument("-o", "--output", required=True, help="PNG to write")
    export = tsub.add_parser("export", help="convert to another trace format")
    export.add_argument("file")
    export.add_argument("--format", default="chrome", choices=["chrome"])
    export.add_argument("-o", "--output", required=True, help="file to write")
    merge = tsub.add_parser("merge", help="assemble FILE from the FILE.parts a crashed run left")
    merge.add_argument("file")

    sub.add_parser("models", help="list the model names --model accepts")
    return parser


def _run(args) -> int:
    from .algorithms import ALGORITHMS as FUNCTIONS
    from .comm.mpi import LauncherMismatch, MPIComm
    from .runtime import run

    fields = {f: getattr(args, f) for f in RunConfig.__dataclass_fields__ if f != "algorithm" and hasattr(args, f)}
    cfg = RunConfig(algorithm=args.algorithm, **fields)
    try:
        comm = MPIComm()
    except LauncherMismatch as e:
        sys.stderr.write(f"pardiff: error: {e}\n")
        return 3
    return run(cfg, comm, FUNCTIONS.get(cfg.algorithm))


def _trace(args) -> int:
    from .trace.reader import load_trace
    if args.trace_command == "merge":
        from .trace.writer import merge_parts
        ranks = merge_parts(args.file)
        print(f"merged ranks {ranks} into {args.file}")
        return 0
    try:
        trace = load_trace(args.file)
    except (OSError, ValueError) as e:
        sys.stderr.write(f"pardiff: error: {e}\n")
        return 2
    if args.trace_command == "summary":
        from .trace.summary import format_summary
        print(format_summary(trace))
    elif args.trace_command == "plot":
        from .trace.plot import plot_timeline
        plot_timeline(trace, args.output)
        print(f"wrote {args.output}")
    elif args.trace_command == "export":
        from .trace.export import write_chrome
        write_chrome(trace, args.output)
        print(f"wrote {args.output}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("run", "fit-iia"):
        return _run(args)
    if args.command == "trace":
        return _trace(args)
    if args.command == "models":
        from .models import model_names
        print("\n".join(model_names()))
        return 0
    return 2
