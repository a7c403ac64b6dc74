"""IIA step sizes on disk: the coefficients and what they belong to.

One HDF5 file: dataset ``coefficients`` (steps × quantities), ``residual_base`` and
``residual_fitted`` (per step), ``grid`` (the coarse timesteps, or EDM's σ̃ steps), and
attributes naming the solver, the model, its sample shape and schedule, M, r, |B|, the
seed and the guidance scale. Loading them for another model or grid is refused.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import h5py
import numpy as np

FORMAT = "pardiff-iia"

# sampler name (pardiff run --sampler) -> the fit-iia --solver whose step sizes it uses
SAMPLER_OF_SOLVER = {"ddim": "iia-ddim", "ddim-cfg": "iia-ddim-cfg", "dpmsolver++": "iia-dpmsolver++",
                     "biia-edm": "biia-edm", "iia-edm": "iia-edm"}


def schedule_fingerprint(schedule) -> str:
    """A short hash of the model's β schedule and clipping."""
    h = hashlib.sha256(np.asarray(schedule.betas, dtype=np.float64).tobytes())
    h.update(f"{schedule.clip_sample}{schedule.clip_sample_range}{schedule.set_alpha_to_one}".encode())
    return h.hexdigest()[:16]


@dataclass
class Coefficients:
    solver: str                           # fit-iia --solver
    coefficients: np.ndarray              # (steps, quantities)
    grid: np.ndarray                      # the coarse timesteps (or σ̃ steps) they were fitted on
    model: str
    sample_shape: tuple
    schedule: str                         # schedule_fingerprint
    fine: int                             # M
    history: int = 0                      # r (EDM)
    batch: int = 0                        # |B|
    seed: int = 0
    guidance: float | None = None
    residual_base: np.ndarray = field(default_factory=lambda: np.zeros(0))
    residual_fitted: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def steps(self) -> int:
        return self.coefficients.shape[0]

    def save(self, path: str) -> None:
        with h5py.File(path, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["meta"] = json.dumps({"solver": self.solver, "model": self.model,
                                          "sample_shape": list(self.sample_shape), "schedule": self.schedule,
                                          "fine": self.fine, "history": self.history, "batch": self.batch,
                                          "seed": self.seed, "guidance": self.guidance})
            for name in ("coefficients", "grid", "residual_base", "residual_fitted"):
                f.create_dataset(name, data=np.asarray(getattr(self, name), dtype=np.float64))

    @classmethod
    def load(cls, path: str) -> "Coefficients":
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("format") != FORMAT:
                    raise ValueError(f"{path!r} is not an IIA coefficients file (written by pardiff fit-iia)")
                meta = json.loads(f.attrs["meta"])
                arrays = {name: f[name][()] for name in ("coefficients", "grid", "residual_base", "residual_fitted")}
        except OSError as e:
            raise ValueError(f"cannot read {path!r}: {e}") from None
        meta["sample_shape"] = tuple(meta["sample_shape"])
        return cls(**meta, **arrays)

    def check(self, sampler: str, model_spec: str, model, grid) -> None:
        """Raise ValueError unless these step sizes belong to this sampler, model and grid."""
        if SAMPLER_OF_SOLVER[self.solver] != sampler:
            raise ValueError(f"the step sizes were fitted for {SAMPLER_OF_SOLVER[self.solver]} "
                             f"(fit-iia --solver {self.solver}), not --sampler {sampler}")
        if self.model != model_spec or tuple(model.sample_shape) != self.sample_shape \
                or schedule_fingerprint(model.schedule) != self.schedule:
            raise ValueError(f"the step sizes were fitted for model {self.model!r} "
                             f"{'x'.join(map(str, self.sample_shape))}, not for --model {model_spec!r}")
        grid = np.asarray(grid, dtype=np.float64)
        if grid.shape != self.grid.shape or not np.allclose(grid, self.grid, rtol=1e-9, atol=1e-9):
            raise ValueError(f"the step sizes were fitted on another timestep grid (fit-iia --steps {self.steps}); "
                             f"refit them for this run's grid")
