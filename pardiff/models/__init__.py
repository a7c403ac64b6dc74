"""Model specs accepted by ``--model``:

- ``gmm`` (default) or ``gmm:CxHxW``: the analytic Gaussian mixture (models/gmm.py);
- ``arch:<name>``: a real architecture from its config with random weights (models/hub.py);
- ``lfw-32``, ``lfw-32-cfg``, ``digits-32-cfg``, ``photos-32-cfg``, ``lfw-ldm``, ``digits-ldm``, ``photos-ldm``:
  pixel-space DDPMs (all but the first class-conditional, for guidance; ``photos-32-cfg`` in colour) and
  three latent diffusion models (``photos-ldm`` in colour) trained by ``pardiff train``, their weights
  shipped in models/weights/;
- a local diffusers folder or a hub id (``org/name``), loaded with ``from_pretrained``.
"""
from __future__ import annotations

import os
import re

import torch

from .base import EpsModel
from .gmm import GaussianMixture

ARCH_NAMES = ("ddpm-church-256", "ddpm-celebahq-256", "sd2-unet", "dit-xl-2-256")
# Models we trained ourselves (pardiff train; docs/reproduction.md): name -> folder in models/weights/
TRAINED = {"lfw-32": "lfw-32", "lfw-32-cfg": "lfw-32-cfg", "digits-32-cfg": "digits-32-cfg", "lfw-ldm": "lfw-ldm",
           "digits-ldm": "digits-ldm", "photos-32-cfg": "photos-32-cfg", "photos-ldm": "photos-ldm"}
WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
_GMM = re.compile(r"^gmm(?::(\d+)x(\d+)x(\d+))?$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_model_spec(spec: str) -> None:
    """Raise ValueError (a message for --model) if ``spec`` names no model we can load."""
    m = _GMM.match(spec)
    if m:
        if m.group(1) and min(int(g) for g in m.groups()) < 1:
            raise ValueError(f"gmm shape must be positive, got {spec!r}")
        return
    if spec in TRAINED:
        if not any(os.path.isfile(os.path.join(trained_path(spec), f)) for f in ("config.json", "model_index.json")):
            raise ValueError(f"the weights of {spec!r} are missing from this install ({trained_path(spec)}); "
                             "reinstall pardiff, or train them (the command is in its README.md there, "
                             "and in docs/reproduction.md)")
        return
    if spec.startswith("arch:"):
        if spec[5:] not in ARCH_NAMES:
            raise ValueError(f"unknown architecture {spec!r}; choose from "
                             + ", ".join("arch:" + n for n in ARCH_NAMES))
        return
    if os.path.isdir(spec):
        if not any(os.path.isfile(os.path.join(spec, f)) for f in ("config.json", "model_index.json")):
            raise ValueError(f"{spec!r} is a folder but holds no diffusers config.json or model_index.json")
        return
    if os.path.exists(spec):
        raise ValueError(f"{spec!r} is not a folder; a diffusers model is a folder saved by save_pretrained")
    if not _HUB_ID.match(spec):
        raise ValueError(f"unknown model {spec!r}: use gmm, gmm:CxHxW, arch:<name>, a diffusers folder, "
                         "or a hub id org/name")


def load_model(spec: str, device="cpu", dtype=torch.float32) -> EpsModel:
    check_model_spec(spec)
    m = _GMM.match(spec)
    if m:
        shape = tuple(int(g) for g in m.groups()) if m.group(1) else None
        return GaussianMixture(shape, device=device) if shape else GaussianMixture(device=device)
    from . import hub   # diffusers is imported only when a network is needed
    if spec.startswith("arch:"):
        return hub.load_arch(spec[5:], device=device, dtype=dtype)
    if spec in TRAINED:
        model = hub.load_pretrained(trained_path(spec), device=device, dtype=dtype)
        model.name = spec
        return model
    return hub.load_pretrained(spec, device=device, dtype=dtype)


def trained_path(name: str) -> str:
    """The folder of a model we trained and ship (``TRAINED``)."""
    return os.path.join(WEIGHTS_DIR, TRAINED[name])


def model_names() -> list[str]:
    """Every model name ``--model`` accepts without a path or hub id."""
    return ["gmm", "gmm:CxHxW"] + ["arch:" + n for n in ARCH_NAMES] + list(TRAINED)
