"""Runs one algorithm on the ranks of a job: validate, set up, run, write results.

Three phases, in every rank:
1. validate the configuration; 2. set up (device, model, trace). A bad value in
either phase is agreed on by all ranks (one collective) and every rank exits
with status 2 after one message — no rank starts work.
3. run the algorithm under ``abort_on_error``: a rank that raises prints its
traceback, flushes its trace rows and aborts the whole job, so no peer hangs.
"""
from __future__ import annotations

import os
import platform
import socket
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from . import __version__, seeds
from .comm.base import Comm
from .config import GRID_SAMPLERS, ConfigError, RunConfig, eval_pieces
from .io import save_samples, write_json
from .models import EpsModel, load_model
from .trace.recorder import Recorder
from .trace.writer import PartWriter, merge_parts

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Context:
    """What one rank's algorithm code sees: its config, Comm, model and device."""

    cfg: RunConfig
    comm: Comm
    model: EpsModel
    device: torch.device
    coeffs: object = None                         # IIA step sizes (--coeffs), checked against model and grid
    report: dict = field(default_factory=dict)   # algorithm-specific entries for --report

    @property
    def trace(self) -> Recorder:
        return self.comm.recorder

    @property
    def schedule(self):
        return self.model.schedule

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one latent batch: (batch, C, H, W)."""
        return (self.cfg.batch, *self.model.sample_shape)

    def eps(self, x: torch.Tensor, t, *, line: str, step: int = -1, iter: int = -1,
            labels: torch.Tensor | None = None) -> torch.Tensor:
        """One traced model evaluation ε_θ(x, t) (kind ``compute``, label ``eps``).

        ``t`` is a number, or a list / CPU tensor of per-sample timesteps (batched points);
        fractional timesteps use the schedule's interpolation. ``labels`` (one class per row)
        default to ``--class-label``. With ``--guidance w`` the conditional and unconditional
        predictions are one call of twice the batch, combined as ε(∅) + w (ε(c) − ε(∅)).
        """
        # a Python float stays float64 (torch would make it float32: ~1e-4 off at t ≈ 1000)
        t_host = (torch.tensor(t, dtype=torch.float64) if isinstance(t, float) else torch.as_tensor(t)).reshape(-1)
        rows = x.shape[0]
        if labels is None and self.cfg.class_label >= 0:
            labels = torch.full((rows,), self.cfg.class_label, dtype=torch.long)
        guided = self.cfg.guidance is not None
        if guided:
            x = torch.cat([x, x])
            t_host = t_host.repeat(2) if t_host.numel() == rows else t_host
            labels = torch.cat([labels.cpu().reshape(-1).expand(rows), torch.full((rows,), -1, dtype=torch.long)])
        t_model = t if isinstance(t, int) and not guided else t_host
        with self.trace.span("compute", "eps", line, step=step, iter=iter, t=int(t_host.max()),
                             t_min=int(t_host.min()), batch=x.shape[0]):
            # no host sync: a traced GPU rank times this span with CUDA events (trace/recorder.py);
            # an untraced one reports launch times as compute times (docs/performance.md)
            out = self._network(x, t_model, labels if labels is None else labels.to(self.device, non_blocking=True))
            if guided:
                out = out[rows:] + self.cfg.guidance * (out[:rows] - out[rows:])
        return out

    def _network(self, x: torch.Tensor, t, labels):
        """The model on ``x``, in pieces of at most --eval-batch rows (one after another: the memory of
        one piece's activations at a time). Every row's result is the network's on that row."""
        pieces = eval_pieces(x.shape[0], self.cfg.eval_batch)     # the sizes warm_batches warmed
        if len(pieces) == 1:
            return self.model.eps(x, t, labels)
        per_row = torch.is_tensor(t) and t.numel() == x.shape[0]
        ts = t.split(pieces) if per_row else [t] * len(pieces)
        labels = labels.split(pieces) if labels is not None else [None] * len(pieces)
        return torch.cat([self.model.eps(*piece) for piece in zip(x.split(pieces), ts, labels)])

    def host(self, label: str, line: str, step: int = -1, iter: int = -1):
        """A traced block of local arithmetic (kind ``host``)."""
        return self.trace.span("host", label, line, step=step, iter=iter)

    def noise(self, stream: int, *index: int) -> torch.Tensor:
        """The run's Gaussian for (stream, index...): identical on every rank (pardiff.seeds)."""
        return seeds.gaussian(self.shape, seeds.seed_for(self.cfg.seed, stream, *index), self.device)

    def empty(self) -> torch.Tensor:
        """An uninitialised latent batch on this rank's device (a receive buffer)."""
        return torch.empty(self.shape, dtype=torch.float32, device=self.device)


@contextmanager
def abort_on_error(comm: Comm):
    """Turn any exception on this rank into a job-wide abort (no hung peers)."""
    try:
        yield
    except BaseException as e:
        if isinstance(e, SystemExit) and e.code in (0, None):
            raise
        if type(e).__name__ == "RankFailed":       # a simulated peer failed: it printed the reason
            sys.stderr.write(f"pardiff: rank {comm.rank} of {comm.size} stopped: {e}\n")
            raise SystemExit(1)
        sys.stderr.write(f"pardiff: rank {comm.rank} of {comm.size} failed:\n{traceback.format_exc()}")
        sys.stderr.flush()
        try:
            comm.recorder.close(wait_for_gpu=False)      # keep the trace rows recorded so far
        except Exception:
            pass
        if comm.size > 1:
            comm.abort(1)
        raise SystemExit(1)


def agree(comm: Comm, error: str | None) -> bool:
    """All ranks learn whether any rank failed a check; rank 0 prints the messages."""
    errors = [e for e in comm.allgather_object(error) if e]
    if errors and comm.rank == 0:
        for message in dict.fromkeys(errors):
            sys.stderr.write(f"pardiff: error: {message}\n")
        sys.stderr.flush()
    return bool(errors)


def select_device(cfg: RunConfig, comm: Comm) -> torch.device:
    """cpu, or the GPU ``local rank mod GPU count`` (one GPU per rank on each node)."""
    want = cfg.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("--device", "cuda was asked for but torch sees no GPU")
    local_rank = getattr(comm, "local_rank", comm.rank)
    device = torch.device("cuda", local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def set_tf32(mode: str) -> None:
    """--tf32: whether a GPU may round float32 convolutions and matrix products to TF32 (Ampere
    and newer). ``default`` leaves PyTorch's choice: convolutions in TF32, products in float32, so
    a float32 network's output depends at the 1e-4 level on which kernel the batch size picks."""
    if mode != "default":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = mode == "on"


def _set_threads(comm: Comm, device: torch.device) -> None:
    """Share the node's cores among its ranks, unless the user set OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" not in os.environ:
        local_size = getattr(comm, "local_size", 1)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_size))


def _versions(comm: Comm) -> dict:
    import h5py
    import mpi4py
    import numpy
    v = {"pardiff": __version__, "python": platform.python_version(), "torch": torch.__version__,
         "numpy": numpy.__version__, "h5py": h5py.__version__, "mpi4py": mpi4py.__version__}
    if hasattr(comm, "library_version"):
        v["mpi"] = comm.library_version
    if torch.version.cuda:
        v["cuda"] = torch.version.cuda
        v["cuda_module_loading"] = os.environ.get("CUDA_MODULE_LOADING", "LAZY (default)")
    return v


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _start_trace(cfg: RunConfig, comm: Comm, device: torch.device, warm: list[int]) -> None:
    """Align clocks to rank 0 and attach this rank's recorder (with a part writer if --trace)."""
    offset, rtt = comm.measure_clock_offset(time.perf_counter)
    epoch0 = comm.allgather_object(time.perf_counter() if comm.rank == 0 else None)[0]
    writer = None
    if cfg.trace:
        root = {"algorithm": cfg.algorithm, "world_size": comm.size, "params": cfg.to_dict(),
                "clock": getattr(comm, "clock_kind", "wall"), "backend": comm.backend, "versions": _versions(comm),
                "epoch_unix": time.time() - (time.perf_counter() - (epoch0 + offset))}
        root.update(getattr(comm, "trace_attrs", {}))
        rank_attrs = {"host": socket.gethostname(), "device": _device_name(device), "pid": os.getpid(),
                      "clock_offset_s": offset, "clock_rtt_s": rtt,
                      # the batch sizes evaluated before the clock started (replay prices the others' first use)
                      "warm_batches": warm if device.type == "cuda" or comm.backend == "virtual" else [],
                      # how compute and host rows were timed (traces/SCHEMA.md)
                      "timing": ("virtual" if comm.backend == "virtual" else
                                 "cuda-events" if device.type == "cuda" else "host")}
        writer = PartWriter(cfg.trace, comm.rank, root, rank_attrs)
    if hasattr(comm, "make_recorder"):          # the simulator's virtual clocks
        comm.recorder = comm.make_recorder(writer, warm, batch=cfg.batch, eval_batch=cfg.eval_batch)
    else:
        comm.recorder = Recorder(comm.rank, writer, clock=time.perf_counter, epoch=epoch0 + offset)
        if writer is not None and device.type == "cuda":
            comm.recorder.gpu_timing(device)


def run(cfg: RunConfig, comm: Comm, algorithm, loader=load_model) -> int:
    """Run ``algorithm(ctx)`` on every rank of ``comm``; returns the exit status.

    ``loader(spec, device=, dtype=)`` loads the model (the simulator shares one among its ranks)."""
    error = None
    try:
        cfg.validate(comm.size)
    except ConfigError as e:
        error = str(e)
    if agree(comm, error):
        return 2

    model = device = coeffs = None
    try:
        device = select_device(cfg, comm)
        _set_threads(comm, device)
        set_tf32(cfg.tf32)
        model = loader(cfg.model, device=device, dtype=TORCH_DTYPES[cfg.dtype])
        cfg.validate_with_model(model, comm.size)
        coeffs = _load_coeffs(cfg, model)
        _select_compile(cfg, comm, model, device)
        _select_cuda_graphs(cfg, comm, model, device)
        transport = select_transport(cfg, comm, device)
    except ConfigError as e:
        error = str(e)
    except ValueError as e:         # a model that cannot be loaded
        error = f"--model: {e}"
    if agree(comm, error):
        return 2
    if transport != "mpi":
        error = None
        try:
            from .comm.torchdist import TorchDistComm
            comm = TorchDistComm(transport, device, mpi_comm=comm._c)
        except Exception as e:       # no route between the nodes, a port in use, NCCL refusing the GPUs
            error = f"--transport: {transport} could not be set up: {type(e).__name__}: {e}"
        if agree(comm, error):
            return 2
    if agree(comm, set_staging(comm, cfg.staging, cfg.staging_lane_mb)):
        return 2

    with abort_on_error(comm):
        warm = warm_batches(cfg, comm.rank, comm.size)
        warm_up(model, device, warm, fractional=cfg.algorithm == "fit-iia" or cfg.sampler not in GRID_SAMPLERS)
        _start_trace(cfg, comm, device, warm)
        ctx = Context(cfg, comm, model, device, coeffs)
        comm._barrier()            # start together, so wall time measures the algorithm alone
        t_start = comm.recorder.now()
        sample = algorithm(ctx)
        if device.type == "cuda":
            torch.cuda.synchronize(device)     # untraced runs queue ahead: the run ends when the GPU is done
        wall_s = comm.recorder.now() - t_start
        status = _finish(ctx, sample, wall_s)
        comm.close()
    return status


def set_staging(comm: Comm, staging: str, lane_mb: int) -> str | None:
    """--staging on ``comm`` (collective): with shared, the node's arena mapped and page-locked, before
    the clock (locking is slow). Returns this rank's error, or None; the caller agrees on it."""
    comm.staging = staging
    if staging != "shared":
        return None
    try:
        comm.share_staging(lane_mb << 20)
        comm.shared.register()
    except Exception as e:       # no room for the window, or CUDA refusing to page-lock it
        return f"--staging: shared could not be set up: {type(e).__name__}: {e}"
    return None


def select_transport(cfg: RunConfig, comm: Comm, device: torch.device) -> str:
    """--transport: mpi, or a torch.distributed backend on the MPI ranks (comm/torchdist.py).

    auto is nccl when the ranks own GPUs, one each (NCCL refuses two ranks on one GPU), and
    mpi otherwise (CUDA-aware where the MPI says so, else host staging as --staging says)."""
    want = cfg.transport
    if comm.backend == "virtual":
        if want not in ("auto", "mpi"):
            raise ConfigError("--transport", "the simulator models the transport with --network")
        if cfg.staging != "pinned":
            raise ConfigError("--staging", "the simulator models the transport with --network")
        return "mpi"
    transport = _select_transport(cfg, comm, device)
    if cfg.staging != "pinned" and (transport != "mpi" or device.type != "cuda"):
        raise ConfigError("--staging", "sets how GPU tensors cross an MPI that reads host memory only: it needs GPU "
                                       "ranks (--device cuda) and --transport mpi" +
                          (f" (auto chose {transport})" if cfg.transport == "auto" and transport != "mpi" else ""))
    return transport


def _select_transport(cfg: RunConfig, comm: Comm, device: torch.device) -> str:
    import torch.distributed as dist
    want = cfg.transport
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    own_gpu = device.type == "cuda" and getattr(comm, "local_size", 1) <= gpus
    if want == "auto":
        return "nccl" if comm.size > 1 and own_gpu and dist.is_available() and dist.is_nccl_available() else "mpi"
    if want == "nccl":
        if device.type != "cuda":
            raise ConfigError("--transport", "nccl moves GPU tensors: it needs --device cuda")
        if not (dist.is_available() and dist.is_nccl_available()):
            raise ConfigError("--transport", "this torch has no NCCL (a CPU build?)")
        if not own_gpu:
            raise ConfigError("--transport", f"nccl needs one GPU per rank, but {comm.local_size} ranks share "
                                             f"this node's {gpus} GPU(s): use --transport mpi")
    if want == "gloo" and not (dist.is_available() and dist.is_gloo_available()):
        raise ConfigError("--transport", "this torch has no gloo backend")
    return want


def compile_error(model, device: torch.device) -> str | None:
    """Why ``model`` cannot go through torch.compile on ``device``, or None."""
    if device.type != "cuda":
        return "on needs a GPU (--device cuda)"
    if not hasattr(model, "enable_compile"):
        return f"only diffusers networks are compiled; {model.name!r} is not one"
    try:
        import triton  # noqa: F401  (TorchInductor writes its GPU kernels in triton)
    except ImportError:
        return "TorchInductor needs triton for GPU kernels, and this environment has none"
    return None


def _select_compile(cfg: RunConfig, comm: Comm, model, device: torch.device) -> None:
    """--compile on: the network runs through torch.compile (models/hub.py); every batch size a
    rank will evaluate is compiled in runtime.warm_up, before the clock. Before the CUDA graphs,
    which then capture the compiled kernels."""
    if cfg.compile != "on":
        return
    if comm.backend == "virtual":
        raise ConfigError("--compile", "the simulator's ranks share one model in one process: use off")
    error = compile_error(model, device)
    if error:
        raise ConfigError("--compile", error)
    model.enable_compile()


def _select_cuda_graphs(cfg: RunConfig, comm: Comm, model, device: torch.device) -> None:
    """--cuda-graphs: auto replays diffusers networks on a GPU from CUDA graphs (models/graphs.py).
    Not in the simulator: its ranks are threads sharing one model, and a capture fails when
    another thread launches work meanwhile (replays give eager's numbers bit for bit anyway:
    tests/test_gpu.py)."""
    can = hasattr(model, "enable_cuda_graphs") and comm.backend != "virtual"
    if cfg.cuda_graphs == "on" and comm.backend == "virtual":
        raise ConfigError("--cuda-graphs", "the simulator's ranks share one model in one process: use auto or off")
    if cfg.cuda_graphs == "on":
        if device.type != "cuda":
            raise ConfigError("--cuda-graphs", "on needs a GPU (--device cuda)")
        if not can:
            raise ConfigError("--cuda-graphs", f"only diffusers networks are captured; {cfg.model!r} is not one")
    if cfg.cuda_graphs == "on" or (cfg.cuda_graphs == "auto" and can and device.type == "cuda"):
        model.enable_cuda_graphs()


def warm_batches(cfg: RunConfig, rank: int, size: int) -> list[int]:
    """The model batch sizes this rank will evaluate: --batch (ParaSolver's preconditioning
    steps on rank 0), and the window's rows (they shrink at the end); guidance doubles them."""
    sizes = [cfg.batch]
    if cfg.algorithm in ("parasolver", "paradigms"):
        from .algorithms.window import row_counts
        N = cfg.steps if cfg.algorithm == "paradigms" else (cfg.subintervals or cfg.steps)
        sizes += [rows * cfg.batch for rows in row_counts(N, cfg.window, rank, size)]
    elif cfg.algorithm == "fit-iia":
        from .algorithms.iia_fit import share
        sizes = [max(len(share(cfg.batch, rank, size)), 1)]
    factor = 2 if cfg.guidance is not None else 1
    return sorted({piece for b in sizes for piece in eval_pieces(b * factor, cfg.eval_batch)})


def warm_up(model, device: torch.device, batches: list[int], fractional: bool = False) -> None:
    """On a GPU, untimed evaluations at each of ``batches`` (warm_batches): the CUDA context,
    cuBLAS/cuDNN handles, kernel selection, compiling and CUDA graph capture happen here, not in
    the run. ``fractional``: the sampler also evaluates at fractional timesteps (EDM's σ grid,
    fit-iia's fine steps), which reach the network as floats: another input signature."""
    if device.type != "cuda":
        return
    timesteps = [torch.tensor(model.schedule.T - 1)] + ([torch.tensor(model.schedule.T - 1.5)] if fractional else [])
    # Largest batch first: CUDA graphs share one memory pool (models/graphs.py), and a capture
    # reuses blocks freed by earlier ones only if they are big enough. Smallest first, every
    # size added its own activations: ParaSolver p = 64 on one H100 (64 sizes) ran out of its
    # 80 GB with 66 GiB in the graph pool; largest first it peaks at 38 GiB.
    for b in sorted(batches, reverse=True):
        x = torch.zeros(b, *model.sample_shape, device=device)
        labels = None if model.num_classes is None else torch.full((b,), -1, dtype=torch.long, device=device)
        for t in timesteps:
            model.eps(x, t.repeat(b), labels)
    torch.cuda.synchronize(device)


def _load_coeffs(cfg: RunConfig, model):
    """The IIA step sizes of --coeffs, refused unless fitted for this sampler, model and grid."""
    if not cfg.coeffs:
        return None
    from .iia.coeffs import Coefficients
    from .solvers import make_solver
    try:
        coeffs = Coefficients.load(cfg.coeffs)
        grid = make_solver(cfg.sampler, model.schedule, cfg.steps, coeffs).grid
        coeffs.check(cfg.sampler, cfg.model, model, grid)
    except ValueError as e:
        raise ConfigError("--coeffs", f"{cfg.coeffs}: {e}") from None
    if coeffs.guidance != cfg.guidance:        # step sizes fitted on one ε (guided or not) are for that ε only
        said = lambda w: "no guidance" if w is None else f"guidance {w}"  # noqa: E731
        raise ConfigError("--guidance", f"the step sizes in {cfg.coeffs} were fitted with {said(coeffs.guidance)}, "
                                        f"this run has {said(cfg.guidance)}")
    return coeffs


def _finish(ctx: Context, sample, wall_s: float) -> int:
    """Write the sample and the report on rank 0; merge the trace parts. Returns the exit status:
    1 where the sample holds NaN or inf (written all the same, to look at), else 0."""
    cfg, comm = ctx.cfg, ctx.comm
    comm.recorder.close()
    totals = {f"{k}/{l}": v for (k, l), v in comm.recorder.totals.items()}
    eps = comm.recorder.totals.get(("compute", "eps"), [0, 0.0, 0, 0])
    # NFE counts model evaluations of one point (one latent batch of --batch samples), however
    # many points a call evaluates together: the NFE of the papers' tables.
    busy = {kind: sum(v[1] for (k, _), v in comm.recorder.totals.items() if k in kinds)
            for kind, kinds in (("compute_s", ("compute", "host")), ("communication_s", ("send", "recv", "collective", "wait")))}
    busy["waiting_s"] = comm.recorder.waiting
    busy["idle_s"] = max(wall_s - busy["compute_s"] - busy["communication_s"], 0.0)
    stats = comm.allgather_object({"rank": comm.rank, "wall_s": wall_s, **busy, "totals": totals,
                                   "nfe": eps[3] // cfg.batch, "model_calls": eps[0],
                                   "device": _device_name(ctx.device),
                                   # what the run held on its GPU at most (CUDA graph pools included)
                                   "gpu_memory_peak_gib": torch.cuda.max_memory_reserved(ctx.device) / 2**30
                                   if ctx.device.type == "cuda" else None})
    if comm.rank != 0:
        return 0
    if cfg.out and hasattr(sample, "save"):
        sample.save(cfg.out)                 # fit-iia's step sizes
    elif cfg.out:
        save_samples(cfg.out, sample, ctx.model)
    if cfg.trace:
        merge_parts(cfg.trace, world_size=comm.size)
    if cfg.report:
        report = {"algorithm": cfg.algorithm, "world_size": comm.size, "wall_s": max(s["wall_s"] for s in stats),
                  "nfe": sum(s["nfe"] for s in stats), "per_rank": stats, "params": cfg.to_dict(),
                  "versions": _versions(comm)}
        report.update(ctx.report)
        report.update(getattr(comm, "trace_attrs", {}))     # the simulator's network, profile, stand-in
        write_json(cfg.report, report)
    bad = int((~torch.isfinite(sample)).sum()) if isinstance(sample, torch.Tensor) else 0
    if bad:
        sys.stderr.write(f"pardiff: error: {bad} of the sample's {sample.numel()} values are NaN or inf (written "
                         "as they are): the run's arithmetic overflowed; look at --rho, --gamma, --guidance, --dtype\n")
        return 1
    return 0
