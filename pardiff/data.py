"""Training and reference images that ship offline (``pip install -e '.[train]'``).

``lfw``: scikit-image's ``data.lfw_subset()``, 200 grayscale 25×25 crops from Labeled Faces in
the Wild, the first 100 faces and the last 100 non-faces (background patches). The file is
inside the scikit-image wheel, so it loads with no network. ``lfw-faces``: the 100 faces only.

``digits``: scikit-learn's copy of the UCI handwritten digits (Alpaydin and Kaynak 1998): 1797
grayscale 8×8 images of the digits 0–9 (ink 16, paper 0), labelled 0–9, about 180 per digit; ten
classes for classifier-free guidance. Read from the file inside the scikit-learn wheel without
importing scikit-learn, which would import SciPy for nothing.

``photos``: colour. 5120 square crops of the ten colour photographs that ship inside the
scikit-image and scikit-learn wheels (``PHOTOS``: a portrait, a cat, a cup of coffee, the Hubble
deep field, stained tissue, a motorcycle, a retina, a rocket, a temple, a flower), 512 per photo,
labelled by photo (0..9: ten classes for guidance). Each crop's side is log-uniform between 1/8 and
1/2 of the photo's shorter side, its place uniform; the geometry comes from a fixed seed, and each
crop is resampled (bilinear, antialiased) from the full-resolution photo straight to the size asked
for. The files are read by path with Pillow (a diffusers dependency), without importing either
library; the JPEGs decode the same to within libjpeg's rounding.
"""
from __future__ import annotations

import functools
import importlib.util
import os

DATASETS = ("lfw", "lfw-faces", "digits", "photos")
# random horizontal flips are data (a mirrored 3 is not a 3)
MIRRORED = {"lfw": True, "lfw-faces": True, "digits": False, "photos": True}
CHANNELS = {"lfw": 1, "lfw-faces": 1, "digits": 1, "photos": 3}
# (package, file inside it): the class labels are the positions here
PHOTOS = (("skimage", "data/astronaut.png"), ("skimage", "data/chelsea.png"), ("skimage", "data/coffee.png"),
          ("skimage", "data/hubble_deep_field.jpg"), ("skimage", "data/ihc.png"),
          ("skimage", "data/motorcycle_left.png"), ("skimage", "data/retina.jpg"), ("skimage", "data/rocket.jpg"),
          ("sklearn", "datasets/images/china.jpg"), ("sklearn", "datasets/images/flower.jpg"))
CROPS_PER_PHOTO = 512


def _package_file(dataset: str, package: str, relative: str) -> str:
    """The path of a file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    path = os.path.join(spec.submodule_search_locations[0], relative) if spec else ""
    if not os.path.isfile(path):
        raise ValueError(f"data set {dataset} needs {relative} from the {package} wheel: pip install -e '.[train]'")
    return path


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
    path = _package_file("digits", "sklearn", "datasets/data/digits.csv.gz")
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)           # 1797 rows: 64 pixels (0..16), the label
    images = torch.from_numpy(table[:, :64].reshape(-1, 1, 8, 8) / 16)
    labels = torch.from_numpy(table[:, 64]).long()
    return images, labels


@functools.lru_cache(maxsize=4)      # 2 s each: an evaluation asks for the same size more than once
def _photos(size: int):
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image
    rng = np.random.default_rng(20261125)                               # the crops' geometry: part of the data set
    images, labels = [], []
    for label, (package, relative) in enumerate(PHOTOS):
        with Image.open(_package_file("photos", package, relative)) as f:
            photo = torch.from_numpy(np.asarray(f.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
        h, w = photo.shape[1:]
        sides = np.exp(rng.uniform(np.log(min(h, w) / 8), np.log(min(h, w) / 2), CROPS_PER_PHOTO)).astype(int)
        for side in sides:
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = photo[None, :, top:top + side, left:left + side]
            images.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                                        antialias=side > size))
        labels += [label] * CROPS_PER_PHOTO
    return torch.cat(images).clamp(0, 1), torch.tensor(labels)


def load_dataset(name: str, size: int):
    """Images (N, C, size, size) in [-1, 1], float32, and labels (N,): lfw 1 face, 0 non-face; digits
    0..9; photos 0..9, the photo (``PHOTOS``). C = ``CHANNELS[name]``."""
    import torch.nn.functional as F
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    if name == "photos":
        images, labels = _photos(size)
        return images * 2 - 1, labels.clone()
    images, labels = _digits() if name == "digits" else _lfw()
    if name == "lfw-faces":
        images, labels = images[:100], labels[:100]
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                               antialias=size < images.shape[-1]).clamp(0, 1)
    return images * 2 - 1, labels
