"""Training and reference images that ship offline (``pip install -e '.[train]'``).

``lfw``: scikit-image's ``data.lfw_subset()``, 200 grayscale 25×25 crops from Labeled Faces in
the Wild, the first 100 faces and the last 100 non-faces (background patches). The file is
inside the scikit-image wheel, so it loads with no network. ``lfw-faces``: the 100 faces only.
"""
from __future__ import annotations

DATASETS = ("lfw", "lfw-faces")


def load_dataset(name: str, size: int):
    """Images (N, 1, size, size) in [-1, 1], float32, and labels (N,): 1 face, 0 non-face."""
    import torch
    import torch.nn.functional as F
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    try:
        from skimage.data import lfw_subset
    except ImportError as e:
        raise ValueError(f"data set {name!r} needs scikit-image: pip install -e '.[train]'") from e
    images = torch.from_numpy(lfw_subset()).float()[:, None]            # (200, 1, 25, 25) in [0, 1]
    labels = torch.cat([torch.ones(100, dtype=torch.long), torch.zeros(100, dtype=torch.long)])
    if name == "lfw-faces":
        images, labels = images[:100], labels[:100]
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                               antialias=size < images.shape[-1]).clamp(0, 1)
    return images * 2 - 1, labels
