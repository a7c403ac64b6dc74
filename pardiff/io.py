"""Writing samples and reports."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import torch


def save_samples(path: str, x: torch.Tensor, model) -> None:
    """``.npy``: the final latents (B, C, H, W) as float32; ``.png``: decoded images in a grid."""
    if path.lower().endswith(".npy"):
        np.save(path, x.detach().float().cpu().numpy())
        return
    images = model.decode(x).detach().float().cpu().clamp(-1, 1)
    B, C, H, W = images.shape      # C is 1 or 3: RunConfig.validate_with_model checked it
    cols = math.ceil(math.sqrt(B))
    rows = math.ceil(B / cols)
    grid = torch.zeros(C, rows * H, cols * W)
    for i in range(B):
        r, c = divmod(i, cols)
        grid[:, r * H:(r + 1) * H, c * W:(c + 1) * W] = images[i]
    pixels = ((grid + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    from PIL import Image
    Image.fromarray(pixels[..., 0] if C == 1 else pixels).save(path)


def write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=_jsonable)
        f.write("\n")
    os.replace(tmp, path)


def _jsonable(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
