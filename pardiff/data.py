"""Training and reference images that ship offline (``pip install -e '.[train]'``).

``lfw``: scikit-image's ``data.lfw_subset()``, 200 grayscale 25×25 crops from Labeled Faces in
the Wild, the first 100 faces and the last 100 non-faces (background patches). The file is
inside the scikit-image wheel, so it loads with no network. ``lfw-faces``: the 100 faces only.

``digits``: scikit-learn's copy of the UCI handwritten digits (Alpaydin and Kaynak 1998): 1797
grayscale 8×8 images of the digits 0–9 (ink 16, paper 0), labelled 0–9, about 180 per digit; ten
classes for classifier-free guidance. Read from the file inside the scikit-learn wheel without
importing scikit-learn, which would import SciPy for nothing.
"""
from __future__ import annotations

import importlib.util
import os

DATASETS = ("lfw", "lfw-faces", "digits")
MIRRORED = {"lfw": True, "lfw-faces": True, "digits": False}   # random horizontal flips are data (a mirrored 3 is not a 3)


def _lfw():
    import torch
    try:
        from skimage.data import lfw_subset
    except ImportError as e:
        raise ValueError("data sets lfw, lfw-faces need scikit-image: pip install -e '.[train]'") from e
    images = torch.from_numpy(lfw_subset()).float()[:, None]            # (200, 1, 25, 25) in [0, 1]
    labels = torch.cat([torch.ones(100, dtype=torch.long), torch.zeros(100, dtype=torch.long)])
    return images, labels


def _digits():
    import numpy as np
    import torch
    spec = importlib.util.find_spec("sklearn")                          # finds the package, does not import it
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz") if spec else ""
    if not os.path.isfile(path):
        raise ValueError("data set digits needs scikit-learn (its wheel holds the images): pip install -e '.[train]'")
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)           # 1797 rows: 64 pixels (0..16), the label
    images = torch.from_numpy(table[:, :64].reshape(-1, 1, 8, 8) / 16)
    labels = torch.from_numpy(table[:, 64]).long()
    return images, labels


def load_dataset(name: str, size: int):
    """Images (N, 1, size, size) in [-1, 1], float32, and labels (N,): lfw 1 face, 0 non-face; digits 0..9."""
    import torch.nn.functional as F
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    images, labels = _digits() if name == "digits" else _lfw()
    if name == "lfw-faces":
        images, labels = images[:100], labels[:100]
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                               antialias=size < images.shape[-1]).clamp(0, 1)
    return images * 2 - 1, labels
