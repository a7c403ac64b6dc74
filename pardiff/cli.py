"""The ``pardiff`` command line: run | trace | models."""
from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .config import (ALGORITHMS, ConfigError, RunConfig, check_distinct, check_flags_apply, check_output,
                     check_staging)

# ALGO of run, simulate and bench tracing; fit-iia has its own command, which has its flags
SAMPLING = tuple(a for a in ALGORITHMS if a != "fit-iia")

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


def _add_common_flags(p: argparse.ArgumentParser, outputs: str | None = "run") -> None:
    """The flags every algorithm takes; ``outputs``: run (samples), fit (step sizes) or None (a
    command that names its own files)."""
    d = RunConfig(algorithm="se2p")
    common = p.add_argument_group("common")
    common.add_argument("--model", default=d.model, help="gmm (default), gmm:CxHxW, arch:<name>, a diffusers "
                        "folder or hub id (see `pardiff models`)")
    common.add_argument("--steps", type=int, default=d.steps,
                        help="coarse steps N of the sampler whose step sizes are fitted (default %(default)s)"
                        if outputs == "fit" else "number of sampling steps N (default %(default)s)")
    common.add_argument("--seed", type=int, default=d.seed, help="run seed (default %(default)s)")
    common.add_argument("--batch", type=int, default=d.batch, help="samples per run (default %(default)s)")
    common.add_argument("--eval-batch", type=int, default=d.eval_batch,
                        help="most rows per network call: a larger evaluation runs in pieces of this size, one "
                             "after another, to bound GPU memory (default 0: all rows at once)")
    common.add_argument("--class-label", type=int, default=d.class_label,
                        help="class for class-conditional models; -1 = unconditional (default)")
    common.add_argument("--device", default=d.device, help="auto | cpu | cuda (rank r takes GPU local_rank mod count)")
    common.add_argument("--dtype", default=d.dtype, help="network dtype: float32 | float16 | bfloat16")
    common.add_argument("--cuda-graphs", default=d.cuda_graphs,
                        help="auto (default: on for diffusers networks on a GPU) | on | off: replay the network "
                             "from CUDA graphs captured before the run")
    common.add_argument("--compile", default=d.compile,
                        help="off (default) | on: the network through torch.compile (TorchInductor kernels; "
                             "a GPU and triton; compiled before the run, ~1 min per model; docs/performance.md)")
    common.add_argument("--tf32", default=d.tf32,
                        help="float32 on a GPU: default (PyTorch's: TF32 convolutions, float32 matrix products) | "
                             "off (float32 everywhere, e.g. to compare samples across batch sizes) | on (TF32 both)")
    common.add_argument("--transport", default=d.transport,
                        help="auto (default: nccl when every rank owns a GPU, else mpi) | mpi (CUDA-aware if the MPI "
                             "says so, else pinned host staging) | nccl | gloo (torch.distributed on the MPI ranks)")
    common.add_argument("--staging", default=d.staging,
                        help="GPU tensors over an MPI that reads host memory only: pinned (default: through pinned "
                             "buffers, MPI moving the bytes) | shared (ranks of one node: through host memory both "
                             "map, MPI carrying a header; docs/performance.md) | pageable")
    common.add_argument("--staging-lane-mb", type=int, default=d.staging_lane_mb,
                        help="--staging shared: MiB of shared host memory per pair of ranks of a node, page-locked "
                             "(default %(default)s; a message that does not fit goes the pinned way)")
    if outputs == "fit":
        common.add_argument("--out", help="write the fitted step sizes to FILE.h5 (for --coeffs)")
        common.add_argument("--trace", help="record every compute and message to FILE.h5")
        common.add_argument("--report", help="write FILE.json: the residuals before and after the fit, the step "
                                             "sizes, wall time")
    elif outputs == "run":
        common.add_argument("--out", help="write the samples: FILE.npy (latents) or FILE.png (image grid)")
        common.add_argument("--trace", help="record every compute and message to FILE.h5")
        common.add_argument("--report", help="write FILE.json (wall time, NFE, per-rank totals)")
    common.add_argument("--guidance", type=float, default=d.guidance,
                        help="classifier-free guidance scale w (class-conditional models, with --class-label)")


def _add_run_flags(p: argparse.ArgumentParser, outputs: str | None = "run") -> None:
    d = RunConfig(algorithm="se2p")
    _add_common_flags(p, outputs)
    seq = p.add_argument_group("sequential, parasolver, paradigms")
    seq.add_argument("--sampler", default=d.sampler,
                     help="ddpm (default) | ddim | dpmsolver (DPM-Solver++ 2M) | edm | iia-ddim | iia-ddim-cfg | "
                          "iia-dpmsolver++ | biia-edm | iia-edm (docs/algorithms/iia.md)")
    seq.add_argument("--coeffs", help="IIA step sizes (FILE.h5 from pardiff fit-iia) for the iia-* samplers")
    par = p.add_argument_group("parasolver, paradigms (docs/algorithms/parasolver.md)")
    par.add_argument("--subintervals", type=int, default=None,
                     help="parasolver: N subintervals, dividing --steps (default: one per step)")
    par.add_argument("--precondition", type=int, default=None,
                     help=f"parasolver: M preconditioning steps, 0 = start from noise (default {d.precondition})")
    par.add_argument("--window", type=int, default=None, help=f"window size p (default {d.window})")
    par.add_argument("--tol", type=float, default=None, help=f"tolerance δ of the stopping rule (default {d.tol})")
    par.add_argument("--clean-estimate", default=None,
                     help="parasolver line 8: x̂_0 from the window's last subproblem's first step (first, the "
                          "paper) or last step (last, the authors' code)")
    par.add_argument("--last-variance", default=None,
                     help="parasolver Eq. 14, the last point's σ²: the DDPM variance of the last step, to ᾱ = 1 "
                          "(step, default: zero, so the last point passes only unchanged) or to timestep 0's ᾱ "
                          "(authors, their code)")
    par.add_argument("--missing-history", default=None,
                     help="Eq. 14 for a multistep sampler (dpmsolver, iia-*): a point that has just entered the "
                          "window has no previous x̂_0 and counts as unsettled (default) or settled, judged by its "
                          "latent alone (fewer iterations, farther from the sequential sample)")
    # The flags of one algorithm default to None here (RunConfig holds the defaults), so that one
    # given to another algorithm is refused (config.check_flags_apply) instead of ignored.
    se2p = p.add_argument_group("se2p (docs/algorithms/se2p.md)")
    se2p.add_argument("--gamma", type=float, default=None, help=f"mixing parameter γ in (0, 1] (default {d.gamma})")
    se2p.add_argument("--rho", type=float, default=None, help=f"variance scaling ρ > 0 (default {d.rho})")
    se2p.add_argument("--integration", default=None,
                      help="predictor (the paper's method) | naive (the §4.5 ablation) | predictor-tk1 (Fig. 27)")
    se2p.add_argument("--mu-pred", default=None,
                      help="ho (Ho et al. Eq. 7, default) | as-printed (the typeset line 7 / line 8)")
    se2p.add_argument("--seed-sharing", default=None,
                      help="message (Proc 0 sends each step's seed, default) | precomputed (App. B note 3 (ii))")
    se2p.add_argument("--return-latent", default=None,
                      help="on-grid (Proc P-1's final latent, default) | proc0 (Proc 0's own)")
    se2p.add_argument("--exchange", default=None,
                      help="roundtrip (lines 9-10 as printed: x̂_pred out, the integrated latent back; default) | "
                           "swap (Proc p-1's x̂_pred and Proc p's latent cross at once and both procs integrate line 9: "
                           "same samples, one message latency per step instead of two)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pardiff", description="Parallel diffusion sampling as traced MPI programs.")
    parser.add_argument("--version", action="version", version=f"pardiff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run an algorithm on the ranks of this MPI job",
                         description="Run ALGO on every rank: mpiexec -n P pardiff run ALGO [flags]")
    run.add_argument("algorithm", metavar="ALGO", help=" | ".join(SAMPLING))
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
    _add_common_flags(fit, outputs="fit")
    fit.set_defaults(algorithm="fit-iia", batch=16)        # |B|: the paper averages (7) over 16 noises

    sim = sub.add_parser("simulate", help="run ALGO on virtual ranks on a modelled network, or replay a trace",
                         description="pardiff simulate ALGO --ranks P --network NAME [--profile FILE] [run flags] | "
                                     "pardiff simulate --replay TRACE.h5 --network NAME (docs/simulator.md)")
    sim.add_argument("algorithm", metavar="ALGO", nargs="?", help=" | ".join(SAMPLING))
    simg = sim.add_argument_group("simulator")
    simg.add_argument("--ranks", type=int, help="P virtual ranks (execute mode)")
    simg.add_argument("--network", default="nvlink",
                      help="nvlink (default) | pcie | ib-hdr | eth-100g | eth-10g | FILE.json | recorded "
                           "(with --replay: the trace's own message costs)")
    simg.add_argument("--ranks-per-node", type=int, help="ranks sharing a node's intra-node link "
                                                         "(default: the network's)")
    simg.add_argument("--profile", help="compute profile: FILE.json from pardiff bench model, or a device whose "
                                        "profiles ship with pardiff (h200) (default: each evaluation costs the "
                                        "CPU time it takes here)")
    simg.add_argument("--replay", metavar="TRACE", help="re-time a recorded trace instead of executing ALGO")
    simg.add_argument("--stand-in", action="store_true",
                      help="execute an arch: model's runs with the exact mixture in its shape and schedule, its "
                           "evaluations priced by --profile (large networks are too slow on a CPU)")
    simg.add_argument("--strides", metavar="REPORT.json",
                      help="parasolver / paradigms: take the window's strides from a measured run's --report "
                           "instead of deciding them on this model, so that a --stand-in run makes the measured "
                           "run's iterations, batches and messages (the decision does not depend on the ranks)")
    _add_run_flags(sim)

    bench = sub.add_parser("bench", help="measurements: model (evaluation time per batch, a simulator "
                           "profile), comm (message time per size), tracing (trace on vs off)")
    bsub = bench.add_subparsers(dest="bench_command", required=True, parser_class=_Parser)
    bmodel = bsub.add_parser("model", help="a model's evaluation time per batch size (a simulator profile)")
    bmodel.add_argument("--model", default="gmm", help="as for pardiff run (default %(default)s)")
    bmodel.add_argument("--batch", default="1,2,4,8", help="comma-separated batch sizes (default %(default)s)")
    bmodel.add_argument("--device", default="auto", help="auto (default) | cpu | cuda")
    bmodel.add_argument("--dtype", default="float32", help="float32 (default) | float16 | bfloat16")
    bmodel.add_argument("--repeats", type=int, default=10, help="timed evaluations per batch size (default %(default)s)")
    bmodel.add_argument("--out", required=True, help="profile FILE.json")
    bmodel.add_argument("--cuda-graphs", default="off", help="off (default) | on: time replays of captured graphs")
    bmodel.add_argument("--compile", default="off", help="off (default) | on: time the torch.compile'd network")
    bcomm = bsub.add_parser("comm", help="one-way message time between ranks 0 and 1 per size (run under mpiexec)")
    bcomm.add_argument("--sizes", default="8,1024,65536,786432,8388608",
                       help="comma-separated message sizes in bytes (default %(default)s)")
    bcomm.add_argument("--device", default="cpu", help="cpu | cuda (GPU tensors, the path Comm takes for them)")
    bcomm.add_argument("--repeats", type=int, default=20, help="round trips per size (default %(default)s)")
    bcomm.add_argument("--out", help="results FILE.json (a link fit for pardiff simulate needs two sizes or more)")
    bcomm.add_argument("--transport", default="mpi", help="mpi (default) | nccl | gloo: the path to measure")
    bcomm.add_argument("--staging", default="pinned",
                       help="GPU tensors over a host-only MPI: pinned (default, what runs use) | shared | pageable")
    bcomm.add_argument("--staging-lane-mb", type=int, default=RunConfig.staging_lane_mb,
                       help="--staging shared: MiB of shared arena per pair of ranks (default %(default)s)")
    btrace = bsub.add_parser("tracing", help="wall time of one run with the trace on and off (run under mpiexec)",
                             description="pardiff bench tracing ALGO [run flags] --repeats N --results FILE.json")
    btrace.add_argument("algorithm", metavar="ALGO", help=" | ".join(SAMPLING))
    _add_run_flags(btrace, outputs=None)
    btrace.add_argument("--repeats", type=int, default=5, help="runs with the trace on, and as many off")
    btrace.add_argument("--results", required=True, help="FILE.json for the timings (FILE-trace.h5: the last trace)")

    trace = sub.add_parser("trace", help="inspect a trace file")
    tsub = trace.add_subparsers(dest="trace_command", required=True, parser_class=_Parser)
    summary = tsub.add_parser("summary", help="per rank and label: compute, communication, waiting, bytes")
    summary.add_argument("file", help="TRACE.h5 (or the TRACE.h5.parts a crashed run left)")
    plot = tsub.add_parser("plot", help="a timeline PNG, one lane per rank")
    plot.add_argument("file", help="TRACE.h5")
    plot.add_argument("-o", "--output", required=True, help="FILE.png to write")
    export = tsub.add_parser("export", help="convert to another trace format")
    export.add_argument("file", help="TRACE.h5")
    export.add_argument("--format", default="chrome", choices=["chrome"],
                        help="chrome (default): the Trace Event JSON of chrome://tracing and Perfetto")
    export.add_argument("-o", "--output", required=True, help="FILE.json to write")
    merge = tsub.add_parser("merge", help="assemble FILE from the FILE.parts a crashed run left")
    merge.add_argument("file", help="TRACE.h5, assembled from TRACE.h5.parts")

    sub.add_parser("models", help="list the model names --model accepts")
    _add_train_eval(sub)
    return parser


def _add_train_eval(sub) -> None:
    """pardiff train (pardiff/train.py) and pardiff eval (pardiff/quality.py); docs/reproduction.md."""
    from .train import CLASS_DROP, TrainConfig
    d = TrainConfig(out="")
    tr = sub.add_parser("train", help="train a small DDPM (UNet2DModel; pixel space, or latent with --vae-channels) "
                                      "on data that ships offline",
                        description="pardiff train --data lfw --steps 4000 --out FOLDER (needs the train extra: "
                                    "pip install -e '.[train]')")
    tr.add_argument("--data", default=d.data, help="lfw (200 LFW crops, faces and non-faces; default) | lfw-faces | "
                                                    "digits (1797 handwritten digits 0-9, 8x8, resized to --size) | photos (colour: 5120 "
                                                    "crops of 10 photographs, labelled by photo 0-9)")
    tr.add_argument("--size", type=int, default=d.size, help="image size (default %(default)s)")
    tr.add_argument("--channels", default=d.channels, help="UNet widths per level (default %(default)s)")
    tr.add_argument("--steps", type=int, default=d.steps, help="optimizer steps (default %(default)s)")
    tr.add_argument("--batch", type=int, default=d.batch, help="batch size (default %(default)s)")
    tr.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default %(default)s)")
    tr.add_argument("--warmup", type=int, default=d.warmup, help="linear warm-up steps (default %(default)s)")
    tr.add_argument("--ema", type=float, default=d.ema, help="EMA decay of the saved weights, 0 = none "
                                                            "(default %(default)s)")
    tr.add_argument("--seed", type=int, default=d.seed, help="seed of the weights and data stream")
    tr.add_argument("--device", default=d.device, help="auto | cpu | cuda")
    tr.add_argument("--bf16", action="store_true", help="bf16 autocast for the network (GPU)")
    tr.add_argument("--save-dtype", default=d.save_dtype, help="dtype of the saved weights: float16 (default, half "
                                                              "the size) | float32")
    tr.add_argument("--classes", action="store_true",
                    help="class-conditional on the data's labels (lfw: 0 non-face, 1 face; digits: 0-9; photos: the photo 0-9), for classifier-free "
                         "guidance (run --class-label C --guidance W)")
    tr.add_argument("--class-drop", type=float,
                    help=f"with --classes: the fraction of labels trained as the null class (default {CLASS_DROP})")
    tr.add_argument("--clip-sample", default=d.clip_sample,
                    help="the saved scheduler's clip_sample, the clamp of x̂0 to [-1, 1] when sampling: auto (default: "
                         "on for images, as DDPMScheduler's default; off for latents) | on | off (digits-32-cfg: "
                         "guidance with the clamp collapses, docs/reproduction.md)")
    tr.add_argument("--out", required=True, help="FOLDER for the diffusers model (loadable with --model FOLDER)")
    tr.add_argument("--log", help="FILE.json: loss curve, wall time, device, versions")
    lat = tr.add_argument_group("latent diffusion (docs/reproduction.md, lfw-ldm)")
    lat.add_argument("--vae-channels", help="train a latent model: first an AutoencoderKL with these widths per "
                                            "level (e.g. 32,64,64: latents 4x smaller), then the UNet on its latents")
    lat.add_argument("--latent-channels", type=int, default=d.latent_channels,
                     help="latent channels (default %(default)s)")
    lat.add_argument("--vae-steps", type=int, default=d.vae_steps, help="autoencoder steps (default %(default)s)")
    lat.add_argument("--kl-weight", type=float, default=d.kl_weight,
                     help="weight of the KL term against the summed squared error (default %(default)s, the LDM "
                          "paper's)")

    ev = sub.add_parser("eval", help="image statistics and distances of samples written by pardiff run --out",
                        description="pardiff eval A.npy [B.npy ...] --reference lfw|lfw-faces|digits|digits:D|photos|photos:K|gmm|none "
                                    "--report FILE.json")
    ev.add_argument("samples", nargs="+", metavar="SAMPLES", help=".npy files from pardiff run --out")
    ev.add_argument("--reference", default="none",
                    help="none (default): image attributes only | lfw: also KID and face rate against the LFW "
                         "training images | lfw-faces: against its 100 faces | digits: also KID and the digits a "
                         "classifier sees, against the 1797 handwritten digits | digits:D: against digit D's, and "
                         "the rate of samples it calls D | photos, photos:K: the same against the 5120 colour photo crops (or "
                         "photo K's), with a NIQE fitted on them | gmm or gmm:CxHxW: also the exact log-likelihood under "
                         "the mixture")
    ev.add_argument("--report", help="write the metrics to FILE.json")
    ev.add_argument("--per-image", metavar="FILE.npz",
                    help="also write each image's values (attributes; with a data reference its class, distance to "
                         "the nearest training image and NIQE) as arrays keyed SAMPLES|METRIC, for paired comparisons")
    ev.add_argument("--decode", metavar="MODEL", help="the files hold latents of this latent model (pardiff run "
                                                      "--out FILE.npy writes latents): decode them through its "
                                                      "autoencoder first")


def _run_config(args) -> RunConfig:
    """The RunConfig of a command's ALGO and run flags (run, fit-iia, simulate, bench tracing);
    a flag of another algorithm than ALGO raises ConfigError."""
    if args.algorithm == "fit-iia" and args.command != "fit-iia":
        raise ConfigError("ALGO", "fitting step sizes has its own command and flags: mpiexec -n P pardiff fit-iia "
                                  "--solver ... (pardiff fit-iia --help)")
    fields = {f: getattr(args, f) for f in RunConfig.__dataclass_fields__
              if f != "algorithm" and getattr(args, f, None) is not None}
    check_flags_apply(args.algorithm, fields)
    return RunConfig(algorithm=args.algorithm, **fields)


def _run(args) -> int:
    from .algorithms import ALGORITHMS as FUNCTIONS
    from .comm.mpi import LauncherMismatch, MPIComm
    from .runtime import run

    cfg = _run_config(args)
    try:
        comm = MPIComm()
    except LauncherMismatch as e:
        sys.stderr.write(f"pardiff: error: {e}\n")
        return 3
    return run(cfg, comm, FUNCTIONS.get(cfg.algorithm))


def _error(message) -> int:
    """One error line; the exit status of a bad command line. Under mpiexec every rank finds the
    same bad flag: the first rank says so."""
    if _launcher_rank() == 0:
        sys.stderr.write(f"pardiff: error: {message}\n")
    return 2


def _flag_error(flag: str, message) -> int:
    """One message naming the bad flag; the exit status of a bad command line."""
    return _error(f"{flag}: {message}")


def _simulate(args) -> int:
    from .sim.network import load_network
    from .sim.profile import Profile
    from .sim.profile import resolve as resolve_profile

    def _replay_profile(device, trace_path):      # a shipped profile for the model the trace ran
        from .trace.reader import load_trace
        params = load_trace(trace_path).attrs.get("params", {})
        return resolve_profile(device, params.get("model", "gmm"), params.get("dtype", "float32"))

    network = None                   # "recorded": replay keeps the trace's own message costs
    if args.network != "recorded":
        try:
            network = load_network(args.network)
        except ValueError as e:
            return _flag_error("--network", e)
        if args.ranks_per_node is not None and args.ranks_per_node < 1:
            return _flag_error("--ranks-per-node", f"must be >= 1, got {args.ranks_per_node}")
        network = network.with_ranks_per_node(args.ranks_per_node)
    elif not args.replay:
        return _flag_error("--network", "recorded re-uses a trace's own message costs: it needs --replay TRACE")
    elif args.ranks_per_node is not None:
        return _flag_error("--ranks-per-node", "--network recorded keeps the trace's own message costs")
    profile = None
    if args.profile:
        try:
            if args.replay:
                profile = Profile.load(args.profile) if args.profile.endswith(".json") else \
                    _replay_profile(args.profile, args.replay)
            else:
                profile = resolve_profile(args.profile, args.model, args.dtype)
        except (OSError, ValueError, TypeError) as e:
            return _flag_error("--profile", e)
    if args.replay:
        if args.algorithm:
            return _flag_error("--replay", "re-times a recorded trace: give either ALGO or --replay, not both")
        _check_replay_flags(args)
        from .sim.replay import replay
        try:
            return replay(args.replay, network, profile, trace_out=args.trace, report_out=args.report)
        except (OSError, ValueError) as e:       # unreadable file, not a trace, ranks that do not match
            return _flag_error("--replay", e)
    if not args.algorithm:
        return _flag_error("ALGO", "give the algorithm to simulate (or --replay TRACE)")
    if args.ranks is None or args.ranks < 1:
        return _flag_error("--ranks", f"give the number of virtual ranks (>= 1), got {args.ranks}")
    try:
        cfg = _run_config(args)
        cfg.validate(args.ranks, ranks_flag="--ranks")   # before any virtual rank starts; --ranks is the world size
    except ConfigError as e:
        flag = "--ranks" if e.flag == "ranks" else e.flag
        return _flag_error(flag, str(e).split(": ", 1)[1])
    if profile and (profile.model != cfg.model or profile.dtype != cfg.dtype):
        return _flag_error("--profile", f"{args.profile} was measured for --model {profile.model} --dtype {profile.dtype}, "
                                  f"not --model {cfg.model} --dtype {cfg.dtype}")
    if args.stand_in and (not cfg.model.startswith("arch:") or profile is None):
        return _flag_error("--stand-in", "replaces an arch: model whose evaluations --profile prices: give both")
    strides = None
    if args.strides:
        try:
            strides = _measured_strides(args.strides, cfg)
        except (OSError, ValueError, KeyError, TypeError) as e:
            return _flag_error("--strides", e)
    from .sim.execute import simulate
    return simulate(cfg, args.ranks, network, profile, stand_in=args.stand_in, strides=strides,
                    strides_from=args.strides)


def _check_replay_flags(args) -> None:
    """simulate --replay: the trace fixes the run, so run flags would be silently ignored: refused.
    Its outputs are checked before the replay, and neither may be the trace it reads."""
    defaults = RunConfig(algorithm="se2p")
    for field in RunConfig.__dataclass_fields__:
        if field not in ("algorithm", "trace", "report") and getattr(args, field, None) is not None \
                and getattr(args, field) != getattr(defaults, field):
            raise ConfigError("--" + field.replace("_", "-"), "a replay re-times the trace as it was recorded; run "
                                                              "flags are for execute mode (pardiff simulate ALGO)")
    for flag, given in (("--ranks", args.ranks is not None), ("--strides", args.strides), ("--stand-in", args.stand_in)):
        if given:
            raise ConfigError(flag, "is for execute mode (pardiff simulate ALGO); a replay keeps the trace's ranks "
                                    "and iterations")
    if args.trace:
        check_output("--trace", args.trace, (".h5",))
    if args.report:
        check_output("--report", args.report, (".json",))
    check_distinct({"--replay": args.replay, "--trace": args.trace, "--report": args.report})


def _measured_strides(path: str, cfg: RunConfig) -> list[int]:
    """The window strides of a measured parasolver / paradigms run (its --report), checked to fit
    this run's problem: same algorithm, steps, subintervals and window, so every stride is one the
    window can take here."""
    import json
    if cfg.algorithm not in ("parasolver", "paradigms"):
        raise ValueError(f"only the window solvers (parasolver, paradigms) have strides, not {cfg.algorithm}")
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    if report.get("algorithm") != cfg.algorithm:
        raise ValueError(f"{path} reports a {report.get('algorithm')!r} run, not {cfg.algorithm}")
    N = cfg.steps if cfg.algorithm == "paradigms" or cfg.subintervals is None else cfg.subintervals
    theirs = report["params"]
    for key, ours in (("steps", cfg.steps), ("window", cfg.window)):
        if theirs[key] != ours:
            raise ValueError(f"{path} ran with --{key} {theirs[key]}, this run has {ours}")
    if report["subintervals"] != N:
        raise ValueError(f"{path} ran with {report['subintervals']} subintervals, this run has {N}")
    strides, n = [int(it["stride"]) for it in report["per_iteration"]], 0
    for k, s in enumerate(strides):
        if not 1 <= s <= min(cfg.window, N - n):
            raise ValueError(f"{path}: iteration {k}'s stride {s} does not fit a window of "
                             f"{min(cfg.window, N - n)} at point {n}")
        n += s
    if n != N:
        raise ValueError(f"{path}: the strides add up to {n}, not to the {N} points of the run")
    return strides


def _bench(args) -> int:
    import platform
    import time

    if args.bench_command == "comm":
        try:
            sizes = [int(b) for b in args.sizes.split(",")]
            if not sizes or min(sizes) < 1:
                raise ValueError
        except ValueError:
            return _flag_error("--sizes", f"positive byte counts like 8,1024, got {args.sizes!r}")
        if args.device not in ("cpu", "cuda") or args.repeats < 1:
            bad = "--device" if args.device not in ("cpu", "cuda") else "--repeats"
            return _flag_error(bad, "cpu | cuda, and repeats >= 1")
        if args.transport not in ("mpi", "nccl", "gloo"):
            return _flag_error("--transport", f"mpi | nccl | gloo, got {args.transport!r}")
        check_staging(args.staging, args.staging_lane_mb)
        if args.staging != "pinned" and (args.device != "cuda" or args.transport != "mpi"):
            return _flag_error("--staging", "sets how GPU tensors cross MPI: give --device cuda and --transport mpi")
        if args.transport == "nccl" and args.device != "cuda":
            return _flag_error("--transport", "nccl moves GPU tensors: give --device cuda")
        if args.out:
            check_output("--out", args.out, (".json",))
        from .bench import bench_comm
        return bench_comm(sizes, args.device, args.repeats, args.out, args.transport, args.staging,
                          args.staging_lane_mb)
    if args.bench_command == "tracing":
        if args.repeats < 1:
            return _flag_error("--repeats", f"must be >= 1, got {args.repeats}")
        check_output("--results", args.results, (".json",))   # its traces and reports go next to it
        cfg = _run_config(args)
        from .bench import bench_tracing
        return bench_tracing(cfg, args.repeats, args.results)

    import torch

    from .io import write_json
    from .models import load_model
    from .runtime import TORCH_DTYPES
    from .sim.profile import Profile, measure
    try:
        batches = [int(b) for b in args.batch.split(",")]
        if not batches or min(batches) < 1 or sorted(set(batches)) != batches:
            raise ValueError
    except ValueError:
        return _flag_error("--batch", f"increasing positive sizes like 1,2,4, got {args.batch!r}")
    if args.dtype not in TORCH_DTYPES:
        return _flag_error("--dtype", f"one of {', '.join(TORCH_DTYPES)}, got {args.dtype!r}")
    if args.device not in ("auto", "cpu", "cuda"):
        return _flag_error("--device", f"auto | cpu | cuda, got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        return _flag_error("--device", "cuda was asked for but torch sees no GPU")
    check_output("--out", args.out, (".json",))
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if args.device == "auto" else args.device)
    try:
        model = load_model(args.model, device=torch.device(device), dtype=TORCH_DTYPES[args.dtype])
    except ValueError as e:
        return _flag_error("--model", e)
    if args.repeats < 1:
        return _flag_error("--repeats", f"must be >= 1, got {args.repeats}")
    if args.cuda_graphs not in ("on", "off"):
        return _flag_error("--cuda-graphs", f"on | off, got {args.cuda_graphs!r}")
    if args.compile not in ("on", "off"):
        return _flag_error("--compile", f"on | off, got {args.compile!r}")
    if args.compile == "on":
        from .runtime import compile_error
        error = compile_error(model, torch.device(device))
        if error:
            return _flag_error("--compile", error)
        model.enable_compile()
    if args.cuda_graphs == "on":
        if not hasattr(model, "enable_cuda_graphs") or device == "cpu":
            return _flag_error("--cuda-graphs", "on needs a diffusers network on a GPU")
        model.enable_cuda_graphs()
    with torch.no_grad():
        seconds, first, host = measure(model, batches, repeats=args.repeats)
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"cpu ({platform.machine()})"
    profile = Profile(args.model, args.dtype, name, batches, seconds, first, host, torch=torch.__version__,
                      threads=torch.get_num_threads(), repeats=args.repeats, date=time.strftime("%Y-%m-%d"),
                      cuda_graphs=args.cuda_graphs, compile=args.compile,
                      timing="queued, CUDA events" if device.startswith("cuda") else "host clock, one call at a time")
    write_json(args.out, profile.to_dict())
    for b, s, f, h in zip(batches, seconds, first, host):
        print(f"batch {b:4d}: {s * 1e3:9.3f} ms   first evaluation {f * 1e3:9.3f} ms   latent update {h * 1e3:7.3f} ms")
    return 0


def _trace(args) -> int:
    from .trace.reader import load_trace
    if args.trace_command == "merge":
        from .trace.format import parts_dir
        from .trace.writer import merge_parts
        if not os.path.isdir(parts_dir(args.file)):
            where = "already merged: " if os.path.isfile(args.file) else ""
            return _error(f"{where}no rank parts to merge in {parts_dir(args.file)}")
        try:
            ranks = merge_parts(args.file)
        except OSError as e:            # an empty parts folder, a truncated or unreadable part
            return _error(e)
        print(f"merged ranks {ranks} into {args.file}")
        return 0
    if args.trace_command in ("plot", "export"):
        check_output("-o", args.output, (".png",) if args.trace_command == "plot" else (".json",))
        check_distinct({"FILE": args.file, "-o": args.output})
    try:
        trace = load_trace(args.file)
    except (OSError, ValueError) as e:
        return _error(e)
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


def _train(args) -> int:
    from .train import TrainConfig, train
    fields = {f: getattr(args, f) for f in TrainConfig.__dataclass_fields__}
    log = train(TrainConfig(**fields))
    print(f"trained {log['parameters'] / 1e6:.2f} M parameters for {args.steps} steps in {log['wall_s']:.1f} s "
          f"on {log['device']}: final loss {log['final_loss']:.4f}; wrote {args.out}")
    return 0


def _eval(args) -> int:
    from .quality import EvalError, evaluate, format_table, write_per_image
    if args.report:
        check_output("--report", args.report, (".json",))
    if args.per_image:
        check_output("--per-image", args.per_image, (".npz",))
    per_image = {} if args.per_image else None
    try:
        report = evaluate(args.samples, args.reference, args.decode, per_image)
    except EvalError as e:
        return _error(e)
    if args.report:
        from .io import write_json
        write_json(args.report, report)
    if args.per_image:
        write_per_image(args.per_image, per_image)
    print(format_table(report))
    return 0


def main(argv=None) -> int:
    # One-time costs belong before the clock (runtime.warm_up). CUDA loads each kernel at its first
    # launch by default (lazy loading), which put every kernel of a sampler's step that the network's
    # warm-up had not launched into the run's first step: 27-51 ms of a DDPM run on an H200, 37 ms
    # on an H100 (1.8 ms eager; docs/performance.md). Load them when the CUDA context starts; a
    # CUDA_MODULE_LOADING the user set wins. Before any CUDA call: the context reads it once.
    os.environ.setdefault("CUDA_MODULE_LOADING", "EAGER")
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as e:             # a bad flag found before any work: its message starts with the flag
        return _error(e)


def _dispatch(args) -> int:
    if args.command in ("run", "fit-iia"):
        return _run(args)
    if args.command == "trace":
        return _trace(args)
    if args.command == "simulate":
        return _simulate(args)
    if args.command == "bench":
        return _bench(args)
    if args.command == "train":
        return _train(args)
    if args.command == "eval":
        return _eval(args)
    if args.command == "models":
        from .models import model_names
        print("\n".join(model_names()))
        return 0
    return 2
