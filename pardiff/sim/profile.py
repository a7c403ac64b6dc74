"""Compute profiles: a model's evaluation time per batch size on one device.

``pardiff bench model --model M --batch 1,2,4 --out profile.json`` measures one (median of
repeated, synchronised evaluations after a warm-up). The simulator charges a compute event
of batch b the profile's time at b, interpolated linearly between measured batch sizes and
extrapolated linearly from the two largest beyond them.

A network run eagerly on a GPU is much slower the first time a process evaluates it at a new
batch size (kernel selection and loading: ~130 ms against ~20-40 ms for the fp16 church UNet
on H200, seen in the 2×H200 traces). ParaSolver's and ParaDiGMS's windows change batch size
as they slide, so this matters; the profile keeps each size's first evaluation (``first``)
and the simulator charges it the first time a rank evaluates that size.
"""
from __future__ import annotations

import json
import os
import statistics
import time

import numpy as np

from ..config import eval_pieces

FORMAT = "pardiff-profile"
SHIPPED = os.path.join(os.path.dirname(__file__), "profiles")     # <device>_<model>_<dtype>.json


def resolve(spec: str, model: str, dtype: str) -> "Profile":
    """``--profile``: a FILE.json, or a device name whose profile for ``model`` and ``dtype`` ships
    with pardiff (``h200``: pardiff/sim/profiles/h200_ddpm-church-256_float16.json, ...)."""
    if spec.endswith(".json") or os.path.sep in spec:
        return Profile.load(spec)
    name = f"{spec}_{model.removeprefix('arch:')}_{dtype}.json"
    path = os.path.join(SHIPPED, name)
    if not os.path.isfile(path):
        have = sorted(n[:-5] for n in os.listdir(SHIPPED) if n.endswith(".json"))
        raise ValueError(f"no shipped profile {name[:-5]!r} for --model {model} --dtype {dtype}; shipped: "
                         f"{', '.join(have)}; or give a FILE.json from pardiff bench model")
    return Profile.load(path)


class Profile:
    def __init__(self, model: str, dtype: str, device: str, batch: list[int], seconds: list[float],
                 first: list[float] | None = None, host: list[float] | None = None, **meta):
        if len(batch) == 0 or len(batch) != len(seconds) or sorted(set(batch)) != list(batch) or min(batch) < 1:
            raise ValueError("a profile needs increasing batch sizes and one time per batch size")
        if first is not None and len(first) != len(batch):
            raise ValueError("a profile's first-evaluation times need one per batch size")
        if min(seconds) < 0 or (first is not None and min(first) < 0):
            raise ValueError("a profile's times must be >= 0")
        self.model, self.dtype, self.device = model, dtype, device
        self.batch, self.seconds, self.meta = list(batch), list(seconds), meta
        self.first = list(first) if first is not None else list(seconds)
        if host is not None and (len(host) != len(batch) or min(host) < 0):
            raise ValueError("a profile's host-update times need one per batch size, each >= 0")
        self.host = list(host) if host is not None else None

    def host_s(self, batch: int) -> float:
        """Seconds for one host-side latent update of ``batch`` samples (a ``host`` span); 0 when
        the profile has no such measurement (profiles written before it)."""
        return _interp(self.batch, self.host, batch) if self.host else 0.0

    def eval_s(self, batch: int, first: bool = False) -> float:
        """Seconds for one evaluation of ``batch`` samples (``first``: the process's first at that size)."""
        steady = _interp(self.batch, self.seconds, batch)
        if not first:
            return steady
        extra = [f - s for f, s in zip(self.first, self.seconds)]
        return steady + max(0.0, float(np.interp(batch, self.batch, extra)))   # the extra is flat beyond the ends

    def charge(self, seen: set, batch: int, eval_batch: int = 0) -> float:
        """Seconds for a rank's evaluation of ``batch`` rows, given the sizes it has ``seen`` (updated).
        A run evaluates its --batch once before its clock starts: start ``seen`` with it. Under
        --eval-batch the rows reach the network in pieces, one after another, each priced at its size."""
        total = 0.0
        for rows in eval_pieces(batch, eval_batch):
            first = rows not in seen
            seen.add(rows)
            total += self.eval_s(rows, first)
        return total

    def to_dict(self) -> dict:
        return {"format": FORMAT, "model": self.model, "dtype": self.dtype, "device": self.device,
                "batch": self.batch, "seconds": self.seconds, "first": self.first,
                **({"host": self.host} if self.host else {}), **self.meta}

    @classmethod
    def load(cls, path: str) -> "Profile":
        if not os.path.isfile(path):
            raise ValueError(f"no such file {path!r}")
        try:
            d = json.load(open(path))
        except ValueError as e:
            raise ValueError(f"{path}: not JSON ({e})") from None
        if d.get("format") != FORMAT:
            raise ValueError(f"{path} is not a compute profile (written by pardiff bench model)")
        d.pop("format")
        return cls(**d)


def _interp(b: list[int], s: list[float], batch: int) -> float:
    """Linear in the batch size between measured sizes, extrapolated from the two largest beyond."""
    if len(b) == 1:
        return s[0] * batch / b[0] if batch > b[0] else s[0]
    if batch >= b[-1]:
        return s[-1] + (batch - b[-1]) * (s[-1] - s[-2]) / (b[-1] - b[-2])
    return float(np.interp(batch, b, s))


def measure(model, batches: list[int], repeats: int = 10, warmup: int = 3):
    """(median seconds of ``model.eps``, seconds of its first evaluation, median seconds of one
    host-side latent update) per batch size.

    One evaluation at a size not measured (one more than the largest) first loads the device
    context and libraries, so each size's first evaluation measures only what a new size costs,
    as in a run (which makes one untimed evaluation before its clock starts). The latent update
    is what the samplers' ``host`` spans do: draw the step's seeded Gaussian on the device and
    combine three latents (a DDPM step).

    On a GPU the steady times are per call of ``repeats`` calls queued back to back, timed with
    CUDA events between them: what a run sees, whose host runs ahead (a host sync per call
    would add its own latency, ~0.2 ms: 5 % of a 3.7 ms evaluation)."""
    import torch

    from .. import seeds
    from ..solvers import ddpm
    sync = (lambda: torch.cuda.synchronize(model.device)) if model.device.type == "cuda" else (lambda: None)  # noqa: E731
    t = model.schedule.T // 2
    model.eps(torch.randn(max(batches) + 1, *model.sample_shape, device=model.device), t)
    sync()

    def timed(fn, n):
        times = []
        for _ in range(n):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return times

    def queued(fn, n):
        if model.device.type != "cuda":
            return timed(fn, n)
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
        sync()
        marks[0].record()
        for mark in marks[1:]:
            fn()
            mark.record()
        sync()
        return [a.elapsed_time(b) / 1e3 for a, b in zip(marks, marks[1:])]

    steady, first, host = [], [], []
    a, a_prev = model.schedule.alpha_bar(t), model.schedule.alpha_bar(t - 1)
    for b in batches:
        x = torch.randn(b, *model.sample_shape, device=model.device)
        first.append(timed(lambda: model.eps(x, t), 1 + warmup)[0])
        steady.append(statistics.median(queued(lambda: model.eps(x, t), repeats)))
        step = lambda: ddpm.step(x, x, a, a_prev, seeds.gaussian(x.shape, 1, model.device), None)  # noqa: E731
        timed(step, warmup)
        host.append(statistics.median(queued(step, repeats)))
    return steady, first, host
