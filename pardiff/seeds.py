"""The run's random streams, shared by every algorithm so that parallel runs can
reproduce sequential ones draw for draw.

Every Gaussian a run draws is identified by a stream and an index, e.g.
``(STEP, k)`` for the noise of the DDPM step at grid index k. Its seed is a pure
function of the run seed and that key (numpy's SeedSequence hashing), so any
rank can draw it without asking another, and a sequential run draws the same
numbers. SE2P's "Proc 0 and Proc 1 fix the same random seed" (App. B note 3) is
exactly this: both procs use ``seed_for(run_seed, STEP, k)`` at step k.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

INIT = 0        # the initial latent x_{N-1} ~ N(0, I)
STEP = 1        # the noise of the stochastic step at grid index k (shared by all procs)
PREDICTOR = 2   # SE2P line 8: the predictor's own noise, private to the proc that draws it: (k, proc)
BRIDGE = 3      # ParaSolver line 9: the noise of a point initialised in the window: (iteration + 1, point)
FIT = 4         # fit-iia: the initial noise of sample b of the set B (one draw per sample)

# How many indices each stream's keys carry. SeedSequence ignores trailing zeros of its
# entropy, so (k,) and (k, 0) would hash alike: within a stream every key has one length.
INDICES = {INIT: 0, STEP: 1, PREDICTOR: 2, BRIDGE: 2, FIT: 1}


@lru_cache(maxsize=1 << 16)
def seed_for(run_seed: int, stream: int, *index: int) -> int:
    """A 63-bit seed for one draw, a hash of (run seed, stream, index...).

    Cached: the hash costs ~20 µs of host time, and the parallel solvers draw the same
    step's noise again in every iteration that re-evaluates the step."""
    if len(index) != INDICES.get(stream, -1):
        raise ValueError(f"stream {stream} takes {INDICES.get(stream, 'no such stream: none')} indices, got {index}")
    key = [int(run_seed), int(stream), *(int(i) for i in index)]
    return int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> np.uint64(1))


def gaussian(shape, seed: int, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """N(0, I) of ``shape`` from a generator seeded with ``seed`` on ``device``.

    The numbers depend on the device type (CPU and CUDA generators differ), never
    on the rank, so every rank of a run on one kind of device draws the same.
    """
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=g, device=device, dtype=dtype)
