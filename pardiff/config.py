"""The run configuration: one object, validated at the edge.

Every check names the command-line flag it is about, so a bad γ, ρ, rank count,
path or shape stops the job with one clear message before any rank starts work.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

ALGORITHMS = ("sequential", "se2p", "parasolver", "paradigms", "fit-iia")
SAMPLERS = ("ddpm", "ddim", "dpmsolver", "edm", "iia-ddim", "iia-ddim-cfg", "iia-dpmsolver++", "biia-edm",
            "iia-edm")
GRID_SAMPLERS = ("ddpm", "ddim", "dpmsolver", "iia-ddim", "iia-ddim-cfg", "iia-dpmsolver++")
ONE_STEP_SAMPLERS = ("ddpm", "ddim")     # no history: each step needs only the current latent
IIA_SAMPLERS = ("iia-ddim", "iia-ddim-cfg", "iia-dpmsolver++", "biia-edm", "iia-edm")
IIA_SOLVERS = ("ddim", "ddim-cfg", "dpmsolver++", "biia-edm", "iia-edm")
FIT_TRAJECTORIES = ("iia", "base")
INTEGRATIONS = ("predictor", "naive", "predictor-tk1")
MU_PRED = ("ho", "as-printed")
SEED_SHARING = ("message", "precomputed")
RETURN_LATENT = ("on-grid", "proc0")
CLEAN_ESTIMATES = ("first", "last")
LAST_VARIANCES = ("step", "authors")
MISSING_HISTORY = ("unsettled", "settled")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16")
CUDA_GRAPHS = ("auto", "on", "off")
COMPILE = ("off", "on")
TF32 = ("default", "off", "on")
TRANSPORTS = ("auto", "mpi", "nccl", "gloo")
EXCHANGES = ("roundtrip", "swap")
STAGINGS = ("pinned", "shared", "pageable")
OUT_EXTENSIONS = (".npy", ".png")


class ConfigError(ValueError):
    """A bad command-line value; the message starts with the flag."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"{flag}: {message}")
        self.flag = flag


@dataclass
class RunConfig:
    algorithm: str
    model: str = "gmm"
    steps: int = 10
    seed: int = 0
    batch: int = 1
    eval_batch: int = 0              # most rows per network call (0: all); bounds activation memory
    class_label: int = -1            # -1: unconditional
    device: str = "auto"
    dtype: str = "float32"
    cuda_graphs: str = "auto"        # replay the network from CUDA graphs: auto = on for networks on a GPU
    compile: str = "off"             # the network through torch.compile (TorchInductor kernels), on a GPU
    tf32: str = "default"            # float32 on a GPU: PyTorch's default runs convolutions in TF32 (10-bit mantissa)
    transport: str = "auto"          # how tensors move: auto = nccl when every rank owns a GPU, else mpi
    staging: str = "pinned"          # GPU tensors over a host-only MPI: pinned buffers | the node's shared arena | pageable
    staging_lane_mb: int = 16        # --staging shared: MiB of arena per pair of ranks on a node
    out: str | None = None
    trace: str | None = None
    report: str | None = None
    guidance: float | None = None    # classifier-free guidance scale w: ε̈ = ε(∅) + w (ε(c) − ε(∅))
    # sequential, parasolver, paradigms
    sampler: str = "ddpm"
    coeffs: str | None = None        # IIA step sizes from fit-iia
    # fit-iia
    solver: str = "ddim"
    fine: int = 3                    # M fine-grained steps per coarse step (the paper's App. D.1)
    history: int = 1                 # r (BIIA-EDM, IIA-EDM)
    quantities: int = 2              # IIA-DDIM: Eq. 6 (2) or Eq. 25 (1)
    trajectory: str = "iia"          # the states z_i the fit sees: the IIA sampler's or the base sampler's
    # parasolver, paradigms
    subintervals: int | None = None  # N; None: one per sampler step
    precondition: int = 2            # M
    window: int = 10                 # p
    tol: float = 0.1                 # δ
    clean_estimate: str = "first"    # Alg. 1 line 8: x̂_0 at the window's last subproblem's first / last step
    last_variance: str = "step"      # Eq. 14's σ² of the last point: the last step's (to ᾱ = 1) or the authors' code's (to ᾱ_0)
    missing_history: str = "unsettled"   # Eq. 14 for a multistep sampler's point without a previous x̂_0
    # SE2P
    gamma: float = 0.015
    rho: float = 1.35
    integration: str = "predictor"
    mu_pred: str = "ho"
    seed_sharing: str = "message"
    return_latent: str = "on-grid"
    exchange: str = "roundtrip"      # lines 9-10 as printed (roundtrip) or overlapped (swap): docs/algorithms/se2p.md

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self, world_size: int, ranks_flag: str = "mpiexec -n") -> None:
        """Checks that need no model: values, ranges, paths, the number of ranks."""
        _choice("ALGO", self.algorithm, ALGORITHMS)
        _choice("--sampler", self.sampler, SAMPLERS)
        _choice("--integration", self.integration, INTEGRATIONS)
        _choice("--mu-pred", self.mu_pred, MU_PRED)
        _choice("--seed-sharing", self.seed_sharing, SEED_SHARING)
        _choice("--return-latent", self.return_latent, RETURN_LATENT)
        _choice("--clean-estimate", self.clean_estimate, CLEAN_ESTIMATES)
        _choice("--last-variance", self.last_variance, LAST_VARIANCES)
        _choice("--missing-history", self.missing_history, MISSING_HISTORY)
        _choice("--device", self.device, DEVICES)
        _choice("--dtype", self.dtype, DTYPES)
        _choice("--cuda-graphs", self.cuda_graphs, CUDA_GRAPHS)
        _choice("--compile", self.compile, COMPILE)
        _choice("--tf32", self.tf32, TF32)
        if self.tf32 != "default" and self.dtype != "float32":
            raise ConfigError("--tf32", f"sets how a GPU computes float32; --dtype {self.dtype} has no float32 "
                                        "kernels to change: drop --tf32 or give --dtype float32")
        _choice("--transport", self.transport, TRANSPORTS)
        _choice("--exchange", self.exchange, EXCHANGES)
        check_staging(self.staging, self.staging_lane_mb)
        if self.steps < 1:
            raise ConfigError("--steps", f"must be at least 1, got {self.steps}")
        if self.batch < 1:
            raise ConfigError("--batch", f"must be at least 1, got {self.batch}")
        if self.eval_batch < 0:
            raise ConfigError("--eval-batch", f"must be 0 (all rows at once) or a row count >= 1, got {self.eval_batch}")
        if self.seed < 0:
            raise ConfigError("--seed", f"must be >= 0, got {self.seed}")
        if self.class_label < -1:
            raise ConfigError("--class-label", f"must be -1 (unconditional) or a class index, got {self.class_label}")
        if not 0 < self.gamma <= 1:
            raise ConfigError("--gamma", f"the mixing parameter γ must be in (0, 1], got {self.gamma}")
        if not 0 < self.rho < float("inf"):
            raise ConfigError("--rho", f"the variance scaling ρ must be a finite number > 0, got {self.rho}")
        if self.algorithm == "se2p" and self.sampler != "ddpm":
            raise ConfigError("--sampler", f"se2p runs the paper's DDPM chain (jump sampling), not {self.sampler!r}: "
                                           "drop --sampler or give ddpm")
        if self.algorithm in ("parasolver", "paradigms"):
            self._validate_window()
            if self.sampler not in GRID_SAMPLERS:
                raise ConfigError("--sampler", f"{self.algorithm} needs a sampler with one model evaluation "
                                               f"per step: {', '.join(GRID_SAMPLERS)}; got {self.sampler!r}")
            if self.missing_history != "unsettled" and self.sampler in ONE_STEP_SAMPLERS:
                raise ConfigError("--missing-history", f"only a multistep sampler's points carry a history; "
                                                       f"--sampler {self.sampler} has none")
        if self.last_variance != "step" and self.algorithm != "parasolver":
            raise ConfigError("--last-variance", "the authors' reading of Eq. 14 is ParaSolver's (paradigms follows "
                                                 "diffusers' pipeline): use it with parasolver")
        if self.missing_history != "unsettled" and self.algorithm not in ("parasolver", "paradigms"):
            raise ConfigError("--missing-history", "is a reading of the parallel solvers' stopping rule: "
                                                   "use it with parasolver or paradigms")
        if self.guidance is not None and not (abs(self.guidance) < float("inf")):
            raise ConfigError("--guidance", f"must be a finite number, got {self.guidance}")
        if self.algorithm == "fit-iia":
            self._validate_fit(world_size)
        elif self.sampler in IIA_SAMPLERS and self.algorithm != "se2p":
            if not self.coeffs:
                raise ConfigError("--coeffs", f"--sampler {self.sampler} needs the step sizes fitted by "
                                              "pardiff fit-iia (--coeffs FILE.h5)")
            if not os.path.isfile(self.coeffs):
                raise ConfigError("--coeffs", f"no such file {self.coeffs!r}")
        elif self.coeffs:
            raise ConfigError("--coeffs", f"only the IIA samplers ({', '.join(IIA_SAMPLERS)}) use step sizes")
        if self.guidance is not None and self.algorithm != "fit-iia" and self.class_label < 0:
            raise ConfigError("--guidance", "classifier-free guidance needs a class: give --class-label")
        if self.sampler == "iia-ddim-cfg" and self.algorithm != "fit-iia" and self.guidance is None:
            raise ConfigError("--guidance", "--sampler iia-ddim-cfg samples with classifier-free guidance")
        from .models import check_model_spec
        try:
            check_model_spec(self.model)
        except ValueError as e:
            raise ConfigError("--model", str(e)) from None
        if self.out is not None:
            check_output("--out", self.out, (".h5",) if self.algorithm == "fit-iia" else OUT_EXTENSIONS)
        if self.trace is not None:
            check_output("--trace", self.trace, (".h5",))
        if self.report is not None:
            check_output("--report", self.report, (".json",))
        check_distinct({"--coeffs": self.coeffs, "--out": self.out, "--trace": self.trace, "--report": self.report})
        # ranks_flag: how the user sets the number of ranks (mpiexec -n, or the simulator's --ranks)
        if self.algorithm == "sequential" and world_size != 1:
            raise ConfigError("ranks", f"sequential runs on 1 rank, got {world_size}: use {ranks_flag} 1")
        if self.algorithm == "se2p" and world_size < 2:
            raise ConfigError("ranks", f"se2p needs at least 2 ranks (one per Proc), got {world_size}: "
                                       f"use {ranks_flag} 2 (Algorithm 1) or {ranks_flag} P (Algorithm 2)")

    def _validate_window(self) -> None:
        if not (self.tol >= 0 and self.tol != float("inf")):
            raise ConfigError("--tol", f"the tolerance δ must be a finite number >= 0, got {self.tol}")
        if self.window < 1:
            raise ConfigError("--window", f"the window size p must be at least 1, got {self.window}")
        if self.algorithm == "paradigms":
            return
        N = self.steps if self.subintervals is None else self.subintervals
        if not 1 <= N <= self.steps or self.steps % N:
            raise ConfigError("--subintervals", f"N must divide --steps {self.steps} (1 <= N <= steps), got {N}")
        if not 0 <= self.precondition <= min(N, self.window):
            raise ConfigError("--precondition", f"M must be in 0 .. min(N, window) = {min(N, self.window)} "
                                                f"(points beyond the first window are re-initialised before use), "
                                                f"got {self.precondition}")

    def _validate_fit(self, world_size: int) -> None:
        _choice("--solver", self.solver, IIA_SOLVERS)
        _choice("--trajectory", self.trajectory, FIT_TRAJECTORIES)
        if not self.out:
            raise ConfigError("--out", "fit-iia writes the step sizes to --out FILE.h5")
        if self.fine < 2:
            raise ConfigError("--fine", f"M fine-grained steps per step must be at least 2, got {self.fine}")
        if self.batch < world_size:
            raise ConfigError("--batch", f"|B| = {self.batch} initial noises cannot be split over {world_size} "
                                         "ranks: give at least one per rank")
        if self.history < 0:
            raise ConfigError("--history", f"r must be >= 0, got {self.history}")
        if self.quantities not in (1, 2):
            raise ConfigError("--quantities", f"IIA-DDIM uses 1 (Eq. 25) or 2 (Eq. 6) quantities, got {self.quantities}")
        if self.solver == "ddim-cfg" and self.guidance is None:
            raise ConfigError("--guidance", "--solver ddim-cfg fits the guided sampler: give --guidance w")
        if self.solver in ("biia-edm", "iia-edm") and self.steps < 3:
            raise ConfigError("--steps", "the EDM variants fit steps 1 .. N-2: give at least 3 steps")

    def validate_with_model(self, model, world_size: int) -> None:
        """Checks that need the loaded model's schedule and classes."""
        T = model.schedule.T
        if self.steps > T:
            raise ConfigError("--steps", f"the model has {T} timesteps; got {self.steps} steps")
        if self.algorithm == "se2p":
            top = model.schedule.timesteps(self.steps)[0] + world_size - 1
            if top > T - 1:
                raise ConfigError("--steps", f"with {self.steps} steps on {world_size} ranks Proc 0 would "
                                             f"evaluate at t = {top} > {T - 1}; use fewer steps or ranks")
        if self.out and self.out.lower().endswith(".png") and model.image_channels not in (1, 3):
            raise ConfigError("--out", f"a PNG needs 1 or 3 image channels; {self.model!r} makes "
                                       f"{model.image_channels} (write .npy instead)")
        if (self.guidance is not None or self.solver == "ddim-cfg" and self.algorithm == "fit-iia") \
                and model.num_classes is None:
            raise ConfigError("--guidance", f"classifier-free guidance needs a class-conditional model; "
                                            f"{self.model!r} is not")
        if self.class_label >= 0:
            if model.num_classes is None:
                raise ConfigError("--class-label", f"model {self.model!r} is not class-conditional")
            if self.class_label >= model.num_classes:
                raise ConfigError("--class-label", f"model {self.model!r} has classes 0..{model.num_classes - 1}, "
                                                   f"got {self.class_label}")


def _choice(flag: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(flag, f"must be one of {', '.join(choices)}; got {value!r}")


# Run flags that belong to some algorithms only: given to another, they would be ignored.
FLAG_ALGORITHMS = {
    **dict.fromkeys(("subintervals", "precondition", "clean_estimate", "last_variance"), ("parasolver",)),
    **dict.fromkeys(("window", "tol", "missing_history"), ("parasolver", "paradigms")),
    **dict.fromkeys(("gamma", "rho", "integration", "mu_pred", "seed_sharing", "return_latent", "exchange"), ("se2p",)),
}


def check_staging(staging: str, lane_mb: int) -> None:
    """--staging and --staging-lane-mb (of run and of bench comm)."""
    _choice("--staging", staging, STAGINGS)
    if not 1 <= lane_mb <= 4096:
        raise ConfigError("--staging-lane-mb", f"MiB of shared arena per pair of ranks, 1 to 4096, got {lane_mb}")
    if staging != "shared" and lane_mb != RunConfig.staging_lane_mb:
        raise ConfigError("--staging-lane-mb", "sizes the arena of --staging shared: give --staging shared")


def check_flags_apply(algorithm: str, given) -> None:
    """Every algorithm-specific flag among ``given`` (RunConfig field names) belongs to ``algorithm``."""
    for field in given:
        owners = FLAG_ALGORITHMS.get(field)
        if owners and algorithm not in owners:
            raise ConfigError("--" + field.replace("_", "-"), f"is a flag of {' and '.join(owners)}, not of {algorithm}")


def check_output(flag: str, path: str, extensions: tuple[str, ...]) -> None:
    """A file a command will write: its extension, and a folder that exists and is writable.
    Every command checks its outputs with this before any work, so that a typo in a path
    costs nothing."""
    if os.path.splitext(path)[1].lower() not in extensions:
        raise ConfigError(flag, f"must end in {' or '.join(extensions)}, got {path!r}")
    _writable(flag, path)


def check_distinct(paths: dict[str, str | None]) -> None:
    """No two of a command's files (flag -> path; inputs first) may be one file: an output written
    over an input, or over another output, would lose it silently."""
    seen = {}
    for flag, path in paths.items():
        if path is None:
            continue
        key = os.path.realpath(path)
        if key in seen:
            raise ConfigError(flag, f"{path!r} is the file {seen[key]} names too")
        seen[key] = flag


def check_folder_of(flag: str, path: str) -> None:
    """The folder ``path`` will be written into exists and is writable."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigError(flag, f"folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise ConfigError(flag, f"folder {folder!r} is not writable")


def _writable(flag: str, path: str) -> None:
    check_folder_of(flag, path)
    if os.path.isdir(path):
        raise ConfigError(flag, f"{path!r} is a folder, not a file")


def eval_pieces(rows: int, eval_batch: int) -> list[int]:
    """The batch sizes the network sees for an evaluation of ``rows`` rows under --eval-batch."""
    if not eval_batch or rows <= eval_batch:
        return [rows]
    return [eval_batch] * (rows // eval_batch) + ([rows % eval_batch] if rows % eval_batch else [])
