"""``pardiff eval``: what a sampler changes in its images, measured (docs/reproduction.md).

Per image, on pixel values mapped from [-1, 1] to [0, 1] (clipped): the attributes SE2P claims
to change, brightness (mean luma), contrast (RMS contrast: the luma's standard deviation),
sharpness (variance of the luma's 4-neighbour Laplacian) and colourfulness (Hasler and
Süsstrunk 2003, on the 0..255 scale they define it on; 0 for one channel), and the fraction of
pixels at or beyond the range ends (saturated). Against a reference:

- ``lfw``: KID (unbiased MMD², cubic polynomial kernel) between the samples' and the LFW
  training images' features in a small face / non-face classifier trained here with a fixed
  seed; the rate of samples it calls faces; the RMS distance of each sample to its nearest
  training image (memorisation shows as a small one);
- ``lfw-faces``: the same, against the 100 faces only (the same classifier, trained on all 200):
  the reference for samples drawn for the face class of a class-conditional model (lfw-32-cfg);
- ``digits`` / ``digits:D``: the same against the 1797 handwritten digits (or digit D's), with a
  ten-digit classifier: per sample set the digits it sees (``class_counts``) and, against digit D,
  the fraction of samples it calls D (``class_rate``: how well guidance to D lands); no NIQE;
- ``photos`` / ``photos:K``: the same against the 5120 colour crops of ten photographs (or photo K's),
  with a ten-photo classifier on RGB: ``class_counts`` / ``class_rate`` as for the digits, and
  ``niqe_photos``, NIQE with its pristine model fitted on the crops;
- ``gmm`` / ``gmm:CxHxW``: the exact mean log-likelihood under the mixture, beside that of
  exact samples of it.

NIQE (Mittal, Soundararajan and Bovik 2013) is implemented from the paper and its reference MATLAB
code (MSCN coefficients, GGD / AGGD moment-matching fits, 36 features over two scales, a
multivariate-Gaussian distance), on the luma, with one block per image and the "pristine" model
fitted on the LFW images (``niqe_lfw``) or the photo crops (``niqe_photos``) here: the published model
(96×96 blocks of 125 large photographs) has no block inside a 32×32 image, so these are NSS
distances to a data set, not the published NIQE scale (docs/reproduction.md).
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F

ATTRIBUTES = ("brightness", "contrast", "sharpness", "colourfulness", "saturated")
LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
LUMA = (0.299, 0.587, 0.114)   # ITU-R BT.601
# per reference data set, the classifier's input size (samples are resized to it) and training steps:
# the digits are 8x8 drawings, and at 16x16 the net's receptive field spans a digit (98 % held out
# after 2000 steps; at 32x32, 94 %)
FEATURE_NETS = {"lfw": (32, 400), "digits": (16, 2000), "photos": (32, 1000)}
NIQE_DATA = ("lfw", "photos")   # photographs: natural-scene statistics apply (the digits are drawings)


class EvalError(ValueError):
    """A bad argument: ``flag`` names it."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"{flag}: {message}")
        self.flag = flag


# ---------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------

def load_samples(path: str, decoder=None) -> torch.Tensor:
    """(B, C, H, W) float32 from a ``pardiff run --out FILE.npy``; a latent model's latents (what
    ``--out FILE.npy`` writes for one) are decoded to images through ``decoder``'s autoencoder."""
    if not path.lower().endswith(".npy"):
        raise EvalError("SAMPLES", f"{path!r}: give the .npy files of pardiff run --out (a PNG grid does not "
                                   "say where its images end)")
    if not os.path.isfile(path):
        raise EvalError("SAMPLES", f"{path!r} does not exist")
    try:
        x = np.load(path)
    except (OSError, ValueError) as e:
        raise EvalError("SAMPLES", f"{path!r} is not a readable .npy file: {e}") from None
    if not np.issubdtype(x.dtype, np.floating):
        raise EvalError("SAMPLES", f"{path!r} holds {x.dtype} values; expected the float samples of pardiff run "
                                   "--out, in [-1, 1]")
    if not np.isfinite(x).all():
        raise EvalError("SAMPLES", f"{path!r} holds NaN or inf values: no statistic of them means anything")
    if decoder is not None:
        x = decode_latents(path, x, decoder)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or min(x.shape) < 1:
        hint = " (a latent model's latents? add --decode MODEL)" if x.ndim == 4 and decoder is None else ""
        raise EvalError("SAMPLES", f"{path!r} holds shape {x.shape}; expected images (B, C, H, W) with C = 1 or 3"
                                   + hint)
    if x.shape[2] < 3 or x.shape[3] < 3:
        raise EvalError("SAMPLES", f"{path!r}: images of {x.shape[2]}x{x.shape[3]} are too small for a Laplacian")
    return torch.from_numpy(x.astype(np.float32))


def decode_latents(path: str, latents: np.ndarray, model) -> np.ndarray:
    """Images in [-1, 1] from the latents of the latent model ``model`` (``--decode``), 256 at a time."""
    shape = tuple(model.sample_shape)
    if latents.ndim != 4 or tuple(latents.shape[1:]) != shape:
        raise EvalError("SAMPLES", f"{path!r} holds shape {latents.shape}; --decode {model.name} decodes its "
                                   f"latents, (B, {', '.join(map(str, shape))})")
    chunks = [torch.from_numpy(c.astype(np.float32)) for c in np.array_split(latents, max(1, len(latents) // 256))]
    return torch.cat([model.decode(c).float().cpu() for c in chunks]).numpy()


def load_decoder(spec: str):
    """The latent model ``spec`` (``pardiff eval --decode``), on the CPU."""
    from .models import load_model
    try:
        model = load_model(spec)
    except ValueError as e:
        raise EvalError("--decode", str(e)) from None
    if getattr(model, "vae", None) is None:
        raise EvalError("--decode", f"{spec!r} is a pixel-space model: its samples are images already, "
                                    "give them without --decode")
    return model


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Samples in [-1, 1] to pixel values in [0, 1], as the PNG writer maps them."""
    return ((x.double() + 1) / 2).clamp(0, 1)


def luma(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W) luma of images (B, C, H, W) in [0, 1]: the channel itself, or BT.601 of RGB."""
    if images.shape[1] == 1:
        return images[:, 0]
    w = torch.tensor(LUMA, dtype=images.dtype)
    return (images * w[None, :, None, None]).sum(1)


# ---------------------------------------------------------------------------------------------
# Per-image attributes (images in [0, 1], shape (B, C, H, W)); each returns (B,)
# ---------------------------------------------------------------------------------------------

def brightness(images: torch.Tensor) -> torch.Tensor:
    return luma(images).flatten(1).mean(1)


def contrast(images: torch.Tensor) -> torch.Tensor:
    """RMS contrast: the standard deviation of the luma over the image."""
    return luma(images).flatten(1).std(1, unbiased=False)


def sharpness(images: torch.Tensor) -> torch.Tensor:
    """Variance of the Laplacian of the luma, over the interior (no padding: borders add no edges)."""
    y = luma(images)[:, None]
    lap = F.conv2d(y, LAPLACIAN.to(y.dtype)[None, None])
    return lap.flatten(1).var(1, unbiased=False)


def colourfulness(images: torch.Tensor) -> torch.Tensor:
    """Hasler and Süsstrunk's M = σ_rgyb + 0.3 μ_rgyb on 0..255 RGB; 0 for grayscale images."""
    if images.shape[1] == 1:
        return torch.zeros(images.shape[0], dtype=images.dtype)
    r, g, b = (images[:, i].flatten(1) * 255 for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    sigma = (rg.var(1, unbiased=False) + yb.var(1, unbiased=False)).sqrt()
    mu = (rg.mean(1) ** 2 + yb.mean(1) ** 2).sqrt()
    return sigma + 0.3 * mu


def saturated(x: torch.Tensor) -> torch.Tensor:
    """Fraction of values at or beyond ±1 (raw samples): pixels the image clips to black or white."""
    return (x.abs() >= 1).flatten(1).double().mean(1)


def image_attributes(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every attribute per image, of raw samples x (B, C, H, W) in [-1, 1]."""
    images = to_unit(x)
    return {"brightness": brightness(images), "contrast": contrast(images), "sharpness": sharpness(images),
            "colourfulness": colourfulness(images), "saturated": saturated(x)}


# ---------------------------------------------------------------------------------------------
# KID
# ---------------------------------------------------------------------------------------------

def _kid_yy(fy: torch.Tensor) -> torch.Tensor:
    """KID's reference-only term: the mean kernel over distinct pairs of fy."""
    n, d = len(fy), fy.shape[1]
    fy = fy.double()
    kyy = (fy @ fy.T / d + 1) ** 3
    return (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))


def kid(fx: torch.Tensor, fy: torch.Tensor, yy: torch.Tensor | None = None) -> float:
    """Unbiased MMD² with k(a, b) = (a·b / d + 1)³ (Bińkowski et al. 2018); fx (m, d), fy (n, d).
    ``yy``: ``_kid_yy(fy)`` when already known (the same reference against many sample sets)."""
    m, n, d = len(fx), len(fy), fx.shape[1]
    if m < 2 or n < 2:
        raise ValueError("KID needs at least 2 samples on each side")
    fx, fy = fx.double(), fy.double()
    kxx = (fx @ fx.T / d + 1) ** 3
    kxy = (fx @ fy.T / d + 1) ** 3
    return float((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
                 + (_kid_yy(fy) if yy is None else yy) - 2 * kxy.mean())


def kid_subset_std(fx: torch.Tensor, fy: torch.Tensor, repeats: int = 50, seed: int = 0,
                   yy: torch.Tensor | None = None) -> float:
    """Spread of KID over random halves of the samples (KID's usual ± ; about √2 × the full set's).
    ``yy``: as for ``kid``."""
    g = torch.Generator().manual_seed(seed)
    m, half, d = len(fx), max(2, len(fx) // 2), fx.shape[1]
    fx, fy = fx.double(), fy.double()
    # every half's kernels are rows and columns of the full set's: computed once
    kxx = (fx @ fx.T / d + 1) ** 3
    kxy_row = ((fx @ fy.T / d + 1) ** 3).mean(1)
    yy = _kid_yy(fy) if yy is None else yy
    diagonal, values = kxx.diagonal(), []
    for _ in range(repeats):
        idx = torch.randperm(m, generator=g)[:half]
        chosen = torch.zeros(m, dtype=torch.float64)
        chosen[idx] = 1
        pairs = chosen @ (kxx @ chosen) - diagonal[idx].sum()         # the half's kernel sum, off the diagonal
        values.append(float(pairs / (half * (half - 1)) + yy - 2 * kxy_row[idx].mean()))
    return float(np.std(values))


# ---------------------------------------------------------------------------------------------
# The feature network: a small face / non-face classifier on the LFW images
# ---------------------------------------------------------------------------------------------

class FeatureNet(torch.nn.Module):
    """Three conv layers, global average pooling: 64 features; a linear head on top (one logit for
    two classes, else one per class)."""

    def __init__(self, outputs: int = 1, channels: int = 1):
        super().__init__()
        self.convs = torch.nn.Sequential(
            torch.nn.Conv2d(channels, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Linear(64, outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.features(x))
        return out[:, 0] if out.shape[1] == 1 else out

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted class of each image."""
        out = self(x)
        return (out > 0).long() if out.ndim == 1 else out.argmax(1)


def train_feature_net(images: torch.Tensor, labels: torch.Tensor, seed: int = 0, steps: int = 400,
                      mirrored: bool = True):
    """Train on 80 % of the images (a fixed split), report accuracy on the other 20 %. Two classes:
    one logit and binary cross-entropy; more: softmax cross-entropy. ``mirrored``: random flips.

    Everything is seeded and on the CPU, so every ``pardiff eval`` with the same number of threads
    measures with the same net (another thread count sums in another order: the net differs in the
    last bits, enough to flip a borderline class now and then).
    Returns (net, held-out accuracy).
    """
    classes = int(labels.max()) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(images), generator=g)
        n_test = len(images) // 5
        test, train = order[:n_test], order[n_test:]
        net = FeatureNet(1 if classes <= 2 else classes, images.shape[1])
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
        for _ in range(steps):
            idx = train[torch.randint(len(train), (64,), generator=g)]
            x = images[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            if mirrored:
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            out = net(x)
            loss = F.binary_cross_entropy_with_logits(out, labels[idx].float()) if out.ndim == 1 \
                else F.cross_entropy(out, labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval().requires_grad_(False)
    with torch.no_grad():
        accuracy = float((net.classify(images[test]) == labels[test]).double().mean())
    return net, accuracy


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def parse_reference(reference: str) -> tuple[str, int | None]:
    """``lfw`` / ``lfw-faces`` / ``digits`` / ``digits:D`` / ``photos`` / ``photos:K`` -> (data set, the
    class kept or None)."""
    name, _, label = reference.partition(":")
    if name == "lfw-faces" and not label:
        return "lfw", 1
    if name == "lfw" and not label:
        return "lfw", None
    if name in ("digits", "photos"):
        if not label:
            return name, None
        if label.isdigit() and int(label) <= 9:
            return name, int(label)
        what = "digits:D takes one digit D" if name == "digits" else "photos:K takes one photo K"
        raise EvalError("--reference", f"{what} in 0..9; got {reference!r}")
    raise EvalError("--reference", f"none, lfw, lfw-faces, digits, digits:D, photos, photos:K, gmm or gmm:CxHxW; "
                                   f"got {reference!r}")


class DataReference:
    """A data set's images (``label``: one class's), the feature net trained on all of them, and the
    reference images' features (standardised by all the images' statistics, whichever the reference
    set: one feature space). ``lfw``: face / non-face; ``digits``: the ten digits; ``photos``: the ten
    photographs (RGB)."""

    def __init__(self, data: str, label: int | None = None):
        from .data import MIRRORED, load_dataset
        self.size, steps = FEATURE_NETS[data]
        self.data, self.label, self.mirrored = data, label, MIRRORED[data]
        try:
            # at the models' 32x32, then resized as the samples are: the net sees both through one filter
            loaded, labels = load_dataset(data, 32)
        except ValueError as e:
            raise EvalError("--reference", e) from None
        images = _resize(loaded, self.size)
        self.classes = int(labels.max()) + 1
        self.net, self.accuracy = train_feature_net(images, labels, steps=steps, mirrored=self.mirrored)
        keep = labels == label if label is not None else torch.ones_like(labels, dtype=torch.bool)
        self.images = images[keep]
        self._at_size = {32: self._with_mirror_images(loaded[keep])}    # the nearest-image search at 32x32
        with torch.no_grad():
            f = self.net.features(images).double()
        self.mean, self.std = f.mean(0), f.std(0) + 1e-6
        self.features = (f[keep] - self.mean) / self.std
        self._kid_yy = _kid_yy(self.features)          # KID's reference-only term: the same for every sample set
        # NIQE's natural-scene statistics fit photographs; the digits are 8x8 drawings magnified, whose
        # statistics are the interpolation's
        self.niqe = niqe_model(niqe_features(to_unit(self.images))) if data in NIQE_DATA else None
        self.niqe_key = f"niqe_{data}"

    def _with_mirror_images(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([images, images.flip(-1)]) if self.mirrored else images

    def describe(self) -> dict:
        what = {"lfw": "face / non-face CNN on LFW", "digits": "ten-digit CNN on the handwritten digits",
                "photos": "ten-photograph CNN on the RGB photo crops"}[self.data]
        return {"what": f"{what} (pardiff/quality.py), 64 features, seed 0", "input_size": self.size,
                "held_out_accuracy": self.accuracy, "reference_images": len(self.images)}

    def training_images(self, size: int) -> torch.Tensor:
        """The reference images at ``size`` (and their mirror images where the data set has them)."""
        from .data import load_dataset
        if size not in self._at_size:
            if size == self.size:
                images = self.images
            else:
                images, labels = load_dataset(self.data, size)
                images = images[labels == self.label] if self.label is not None else images
            self._at_size[size] = self._with_mirror_images(images)
        return self._at_size[size]

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The class the feature net gives each image x in [-1, 1] (any size: resized as for the metrics)."""
        with torch.no_grad():
            return self.net.classify(_resize(x.float().clamp(-1, 1), self.size))

    def metrics(self, x: torch.Tensor, per_image: dict | None = None) -> dict:
        """KID and its spread and the classes the net sees (at the net's input size), the RMS distance
        to the nearest training image (at the samples' size if square) of samples x, and NIQE for LFW
        and the photos. LFW: ``face_rate``; digits, photos: ``class_counts`` (per class) and, against one
        class, ``class_rate`` (the fraction the net calls that class). ``per_image``: a dict to receive
        each image's class, nearest-image distance and NIQE as arrays."""
        x = x.float().clamp(-1, 1)
        size = x.shape[-1] if x.shape[-1] == x.shape[-2] else self.size     # the training images are square
        flat = _resize(x, size).flatten(1).double()
        train = self.training_images(size).flatten(1).double()
        nearest = torch.cdist(flat, train).min(1).values / math.sqrt(flat.shape[1])
        x = _resize(x, self.size)
        with torch.no_grad():
            f = (self.net.features(x).double() - self.mean) / self.std
        predicted = self.classify(x)
        out = {"kid": kid(f, self.features, self._kid_yy),
               "kid_subset_std": kid_subset_std(f, self.features, yy=self._kid_yy),
               "nearest_train_rms": float(nearest.mean()), "nearest_train_rms_min": float(nearest.min())}
        if self.data == "lfw":
            out["face_rate"] = float((predicted == 1).double().mean())
        else:
            out["class_counts"] = torch.bincount(predicted, minlength=self.classes).tolist()
            if self.label is not None:
                out["class_rate"] = float((predicted == self.label).double().mean())
        if self.niqe is not None:
            nf = niqe_features(to_unit(x))
            niqe, whole = niqe_scores(self.niqe, nf)
            out[self.niqe_key] = {"mean": float(niqe.mean()),
                                  "se": float(niqe.std(ddof=1) / math.sqrt(len(niqe))) if len(x) > 1 else 0.0,
                                  "set": whole,
                                  "set_subset_std": niqe_set_subset_std(self.niqe, nf) if len(x) > 3 else 0.0}
        if per_image is not None:
            per_image.update({"class": predicted.numpy(), "nearest_train_rms": nearest.numpy()})
            if self.niqe is not None:
                per_image[self.niqe_key] = niqe
        return out


# ---------------------------------------------------------------------------------------------
# NIQE (Mittal, Soundararajan and Bovik, "Making a 'completely blind' image quality analyzer", 2013)
# ---------------------------------------------------------------------------------------------

NIQE_GAMMAS = np.arange(0.2, 10.0005, 0.001)      # the reference code's search grid for the shape α
NIQE_SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))   # horizontal, vertical, main and secondary diagonal
NIQE_FEATURES = 36                                # 18 per scale, two scales


def _gamma_ratio(alpha: np.ndarray) -> np.ndarray:
    """Γ(2/α)² / (Γ(1/α) Γ(3/α)): E|x|² / E[x²] of a generalised Gaussian of shape α (2/π at α = 2)."""
    from scipy.special import gammaln
    return np.exp(2 * gammaln(2 / alpha) - gammaln(1 / alpha) - gammaln(3 / alpha))


_RATIOS = None


def _shape_from_ratio(r: np.ndarray) -> np.ndarray:
    """The grid α whose ratio is nearest r (the reference code's table look-up), per row. The ratio rises
    with α, so a binary search finds the two neighbours of r; the lower wins a tie, as argmin's first."""
    global _RATIOS
    if _RATIOS is None:
        _RATIOS = _gamma_ratio(NIQE_GAMMAS)
        assert np.all(np.diff(_RATIOS) > 0), "the GGD ratio table must rise with alpha"
    r = np.asarray(r, dtype=np.float64)
    upper = np.clip(np.searchsorted(_RATIOS, r), 1, len(_RATIOS) - 1)
    lower = upper - 1
    pick = np.where((_RATIOS[upper] - r) ** 2 < (_RATIOS[lower] - r) ** 2, upper, lower)
    return NIQE_GAMMAS[pick]


def aggd_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shape α and left / right scales β_l, β_r of an asymmetric generalised Gaussian
    (density ∝ exp(−(|x|/β_side)^α) on each side), per row of x (B, n), by moment matching: the
    reference code's estimateaggdparam (a symmetric GGD gives β_l = β_r; a Gaussian α = 2, β = σ√2)."""
    from scipy.special import gammaln
    x = np.asarray(x, dtype=np.float64)
    neg, pos = x < 0, x > 0
    left = np.sqrt((np.where(neg, x, 0) ** 2).sum(1) / np.maximum(neg.sum(1), 1))
    right = np.sqrt((np.where(pos, x, 0) ** 2).sum(1) / np.maximum(pos.sum(1), 1))
    g = left / np.maximum(right, 1e-300)
    r = np.abs(x).mean(1) ** 2 / np.maximum((x ** 2).mean(1), 1e-300)
    r_norm = r * (g ** 3 + 1) * (g + 1) / (g ** 2 + 1) ** 2
    alpha = _shape_from_ratio(r_norm)
    ratio = np.exp(0.5 * (gammaln(1 / alpha) - gammaln(3 / alpha)))
    return alpha, left * ratio, right * ratio


def _gaussian_taps(size: int = 7, sigma: float = 7 / 6) -> torch.Tensor:
    """The 1-D factor of MATLAB's fspecial('gaussian', 7, 7/6): its outer product is the 2-D window
    (normalised to sum 1), so the window filters as one pass along rows and one along columns."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def _gaussian_filter(x: torch.Tensor) -> torch.Tensor:
    """x (B, 1, H + 6, W + 6) filtered with the 7x7 window, valid part (B, 1, H, W): two 1-D passes."""
    g = _gaussian_taps().to(x.dtype)
    return F.conv2d(F.conv2d(x, g[None, None, None, :]), g[None, None, :, None])


def mscn(y: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """Mean-subtracted contrast-normalised coefficients (I − μ) / (σ + C) of luma y (B, H, W) on the
    0..255 scale; μ, σ local, with a 7×7 Gaussian window and replicated borders (imfilter 'replicate')."""
    x = F.pad(y[:, None], (3, 3, 3, 3), mode="replicate")
    mu = _gaussian_filter(x)
    sigma = (_gaussian_filter(x * x) - mu * mu).abs().sqrt()
    return ((y[:, None] - mu) / (sigma + c))[:, 0]


def _scale_features(d: np.ndarray) -> np.ndarray:
    """The 18 features of one scale (the reference code's computefeature), per image of MSCN d (B, H, W)."""
    from scipy.special import gamma as G
    alpha, left, right = aggd_fit(d.reshape(len(d), -1))
    feats = [alpha, (left + right) / 2]
    for shift in NIQE_SHIFTS:
        pair = (d * np.roll(d, shift, axis=(1, 2))).reshape(len(d), -1)     # circshift, as the reference code
        a, bl, br = aggd_fit(pair)
        feats += [a, (br - bl) * G(2 / a) / G(1 / a), bl, br]             # shape, mean, left and right scale
    return np.stack(feats, 1)


def niqe_features(images: torch.Tensor) -> np.ndarray:
    """(B, 36) NIQE features of images (B, C, H, W) in [0, 1], one block per image: 18 at full size,
    18 at half size (bicubic, antialiased, as MATLAB's imresize(0.5))."""
    y = luma(images.double()) * 255
    out = []
    for scale in range(2):
        out.append(_scale_features(mscn(y).numpy()))
        if scale == 0:
            y = F.interpolate(y[:, None], scale_factor=0.5, mode="bicubic", align_corners=False,
                              antialias=True)[:, 0]
    return np.concatenate(out, 1)


def niqe_model(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pristine multivariate Gaussian (mean, covariance) of feature rows."""
    return features.mean(0), np.cov(features, rowvar=False)


def niqe_distance(model: tuple[np.ndarray, np.ndarray], mu: np.ndarray,
                  cov: np.ndarray | float = 0.0) -> float | np.ndarray:
    """√((ν_p − ν)ᵀ ((Σ_p + Σ)/2)⁺ (ν_p − ν)): the reference code's quality (pinv of the mean covariance).
    ``mu``: one feature vector (a float back) or rows of them (each row's distance, the pinv taken once)."""
    d = model[0] - np.asarray(mu)       # one feature vector, or rows of them against one matrix
    squared = np.einsum("...i,ij,...j->...", d, np.linalg.pinv((model[1] + cov) / 2), d)
    distance = np.sqrt(np.maximum(squared, 0.0))
    return float(distance) if distance.ndim == 0 else distance


def niqe_scores(model, features: np.ndarray) -> tuple[np.ndarray, float]:
    """Per image: NIQE of its one block (its own covariance is 0); for the set: NIQE of the MVG of all its
    feature rows against the model (a distance between feature distributions)."""
    per_image = niqe_distance(model, features)      # every row against one (Σ_p / 2)⁺
    whole = niqe_distance(model, *niqe_model(features)) if len(features) > 1 else float(per_image[0])
    return per_image, whole


def niqe_set_subset_std(model, features: np.ndarray, repeats: int = 50, seed: int = 0) -> float:
    """Spread of the set score over random halves of the feature rows (as kid_subset_std; the half-set
    score is biased upwards by its smaller sample, so read this as the noise of a difference)."""
    g = np.random.default_rng(seed)
    half = max(2, len(features) // 2)
    return float(np.std([niqe_distance(model, *niqe_model(features[g.permutation(len(features))[:half]]))
                         for _ in range(repeats)]))


# ---------------------------------------------------------------------------------------------
# The Gaussian mixture
# ---------------------------------------------------------------------------------------------

def gmm_loglik(x: torch.Tensor, spec: str) -> dict:
    """Mean exact log p(x) of the samples, and of as many exact mixture samples, in nats per dimension."""
    from .models import load_model
    mixture = load_model(spec)
    if tuple(x.shape[1:]) != tuple(mixture.sample_shape):
        raise EvalError("--reference", f"{spec} has shape {tuple(mixture.sample_shape)}; the samples "
                                       f"{tuple(x.shape[1:])} (use gmm:CxHxW)")
    exact = mixture.sample(max(len(x), 256), generator=torch.Generator().manual_seed(0))
    D = mixture.dim
    lp = mixture.log_prob(x) / D
    return {"loglik_per_dim": float(lp.mean()), "loglik_per_dim_se": float(lp.std() / math.sqrt(len(lp)))
            if len(lp) > 1 else 0.0, "loglik_per_dim_exact": float((mixture.log_prob(exact) / D).mean())}


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------

def _check_reference(reference: str) -> None:
    from .models import check_model_spec
    if reference == "none":
        return
    if reference.startswith("gmm"):
        try:
            check_model_spec(reference)
            return
        except ValueError as e:
            raise EvalError("--reference", e) from None
    parse_reference(reference)


def evaluate(paths: list[str], reference: str = "none", decode: str | None = None,
             per_image: dict | None = None) -> dict:
    """The metrics of each samples file: per-attribute mean, standard deviation and standard error.
    ``decode``: the files hold latents of this latent model; its autoencoder makes them images first.
    ``per_image``: a dict to receive, per file, each image's values ({path: {metric: array}}: the
    attributes, and with a data reference its class, nearest-image distance and NIQE), for paired
    comparisons between sets sampled from the same noises."""
    _check_reference(reference)
    decoder = load_decoder(decode) if decode else None
    samples = {path: load_samples(path, decoder) for path in paths}
    data = None
    if reference != "none" and not reference.startswith("gmm"):
        name, label = parse_reference(reference)
        from .data import CHANNELS
        bad = [p for p, x in samples.items() if x.shape[1] != CHANNELS[name]]
        if bad:
            what = {"lfw": "the LFW images are grayscale", "digits": "the digit images are grayscale",
                    "photos": "the photo crops are RGB"}[name]
            raise EvalError("--reference", f"{what}; {bad[0]!r} has {samples[bad[0]].shape[1]} channels")
        data = DataReference(name, label)
    files = {}
    for path, x in samples.items():
        entry = {"n": len(x), "shape": list(x.shape[1:])}
        values_of = {}
        for name, values in image_attributes(x).items():
            values_of[name] = values.numpy()
            n = len(values)
            entry[name] = {"mean": float(values.mean()), "std": float(values.std()) if n > 1 else 0.0,
                           "se": float(values.std() / math.sqrt(n)) if n > 1 else 0.0}
        if data is not None:
            entry.update(data.metrics(x, values_of))
        elif reference.startswith("gmm"):
            entry.update(gmm_loglik(x, reference))
        files[path] = entry
        if per_image is not None:
            per_image[path] = values_of
    report = {"reference": reference, "files": files}
    if decode:
        report["decoded_with"] = decode
    if data is not None:
        report["feature_net"] = data.describe()
    return report


def write_per_image(path: str, per_image: dict) -> None:
    """``evaluate``'s per-image values as one .npz, an array per (file, metric), keyed "FILE|METRIC"."""
    np.savez(path, **{f"{f}|{name}": v for f, values in per_image.items() for name, v in values.items()})


def read_per_image(path: str) -> dict:
    """{file: {metric: array}} from ``write_per_image``'s .npz."""
    out = {}
    with np.load(path) as z:
        for key in z.files:
            f, _, name = key.rpartition("|")
            out.setdefault(f, {})[name] = z[key]
    return out


def format_table(report: dict) -> str:
    """One line per samples file: the attribute means (± standard error) and the distances."""
    extra = [k for k in ("kid", "face_rate", "class_rate", "nearest_train_rms", "niqe_lfw", "niqe_photos",
                         "loglik_per_dim")
             if any(k in e for e in report["files"].values())]
    head = ["file", "n", *ATTRIBUTES, *extra]
    rows = [head]
    for path, e in report["files"].items():
        row = [os.path.basename(path), str(e["n"])]
        row += [f"{e[a]['mean']:.4g} ± {e[a]['se']:.2g}" for a in ATTRIBUTES]
        row += [f"{e[k]['mean']:.4g}" if isinstance(e[k], dict) else f"{e[k]:.4g}" for k in extra]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    if "feature_net" in report:
        lines.append(f"feature net ({report['feature_net']['what']}): held-out accuracy "
                     f"{report['feature_net']['held_out_accuracy']:.3f}")
    return "\n".join(lines)
