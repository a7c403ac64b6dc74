"""Execute mode: an algorithm's own SPMD code on P virtual ranks, threads of this process.

Each thread runs ``runtime.run`` with a ``VirtualComm``: the same validation, setup, algorithm,
report and trace as a real rank, so a simulated run gives the real run's samples and message
sequence, with times from the cost models (comm/virtual.py). The ranks share one loaded model.
"""
from __future__ import annotations

import threading

import torch

from ..algorithms import ALGORITHMS
from ..comm.virtual import VirtualComm, World
from ..models import load_model
from ..models.gmm import GaussianMixture
from ..runtime import run


def shared_loader(stand_in: bool = False):
    """load_model, once per (spec, device, dtype) for all virtual ranks; with ``stand_in`` an
    ``arch:`` model is replaced by its stand-in (below)."""
    cache, lock = {}, threading.Lock()

    def load(spec, device, dtype):
        with lock:
            key = (spec, str(device), dtype)
            if key not in cache:
                cache[key] = stand_in_model(spec, device) if stand_in else load_model(spec, device=device, dtype=dtype)
            return cache[key]
    return load


def stand_in_model(spec: str, device):
    """The exact Gaussian-mixture ε-predictor in the sample shape and with the noise schedule of
    the architecture ``spec`` names (``--stand-in``).

    A 100 M-parameter network takes seconds per evaluation on a CPU; its random weights carry no
    information anyway, and the profile prices its evaluations. Every message, batch and step
    is the real run's wherever the algorithm's control flow does not depend on the values (SE2P,
    the sequential samplers, ParaSolver / ParaDiGMS with --tol 0); the samples are the mixture's."""
    from ..models.hub import ARCHS
    from ..schedules import Schedule
    name = spec.removeprefix("arch:")
    if not spec.startswith("arch:") or name not in ARCHS:
        raise ValueError(f"--stand-in replaces an arch: model, not {spec!r}")
    _, config, scheduler = ARCHS[name]
    size = config["sample_size"]
    H, W = (size, size) if isinstance(size, int) else tuple(size)
    model = GaussianMixture((config["in_channels"], H, W), schedule=Schedule.from_config(dict(scheduler)),
                            device=device)
    model.name = spec                      # the name profiles and reports go by
    return model


def simulate(cfg, ranks: int, network, profile=None, stand_in: bool = False, strides=None, strides_from=None) -> int:
    """Run ``cfg.algorithm`` on ``ranks`` virtual ranks; returns the job's exit status.

    ``strides``: the window solvers take these strides (a measured run's, --strides) instead of
    deciding them on this model (algorithms/window.py, Window.first_unconverged)."""
    world = World(ranks, network, profile)
    attrs = {"network": network.to_dict(), "profile": profile.to_dict() if profile else "thread-time",
             "stand_in": f"gmm in the shape of {cfg.model}" if stand_in else "none"}
    if strides is not None:
        attrs["strides_from"] = strides_from
    codes = [0] * ranks
    loader = shared_loader(stand_in)
    torch.set_num_threads(1)            # one core's worth per rank, as a real rank on a shared node

    def rank_main(r: int):
        comm = VirtualComm(world, r)
        comm.trace_attrs = attrs
        comm.scripted_strides = strides
        try:
            codes[r] = run(cfg, comm, ALGORITHMS[cfg.algorithm], loader=loader)
        except SystemExit as e:
            codes[r] = e.code if isinstance(e.code, int) else 1
        except BaseException:           # abort_on_error has reported it; stop the peers
            codes[r] = 1
            comm.abort(1)

    threads = [threading.Thread(target=rank_main, args=(r,), name=f"rank{r}", daemon=True) for r in range(ranks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return max(codes)
