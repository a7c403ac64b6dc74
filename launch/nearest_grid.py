#!/usr/bin/env python3
"""Does a trained model copy its training images? Samples next to their nearest training images.

For the samples in SAMPLES (``pardiff run --out FILE.npy``; a latent model's latents with --decode
MODEL), the RMS distance on [-1, 1] to the nearest training image of --reference (with the mirror
images where the data set has them), and for scale the same distance from each training image to its
nearest *other* training image (leave one out). Writes --png (first row: the first --count samples;
second row: the training image nearest each) and --report (JSON: per-sample distances, their
quantiles, the fraction within --copy-rms of a training image, the leave-one-out quantiles, and the
ratio of the nearest to the second-nearest distance: a sample far closer to one training image than to
any other, ratio < 1/3, is what Carlini et al. 2023, "Extracting training data from diffusion models",
count as extracted; a mirror image is not counted as a second image).

    pardiff run sequential --sampler ddpm --model digits-ldm --steps 100 --batch 256 --out s.npy
    python3 launch/nearest_grid.py s.npy --decode digits-ldm --reference digits --png near.png --report near.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np
import torch


def quantiles(d: torch.Tensor) -> dict:
    return {"mean": float(d.mean()), "min": float(d.min()), "p10": float(d.quantile(0.1)),
            "median": float(d.median()), "p90": float(d.quantile(0.9)), "max": float(d.max())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("samples")
    ap.add_argument("--decode", help="the latent model whose latents SAMPLES holds")
    ap.add_argument("--reference", default="lfw", choices=("lfw", "digits"))
    ap.add_argument("--count", type=int, default=16, help="samples in the picture")
    ap.add_argument("--copy-rms", type=float, default=0.05,
                    help="a sample this close to a training image counts as a copy")
    ap.add_argument("--png", required=True)
    ap.add_argument("--report", required=True)
    args = ap.parse_args(argv)
    if args.count < 1 or args.copy_rms <= 0:
        ap.error("--count must be >= 1 and --copy-rms > 0")

    from pardiff.data import MIRRORED, load_dataset
    from pardiff.quality import decode_latents, load_decoder
    x = np.load(args.samples)
    if args.decode:
        x = decode_latents(args.samples, x, load_decoder(args.decode))
    x = torch.from_numpy(x).float().clamp(-1, 1)
    train, _ = load_dataset(args.reference, x.shape[-1])
    n, mirrored = len(train), MIRRORED[args.reference]
    if mirrored:
        train = torch.cat([train, train.flip(-1)])
    flat, t = x.flatten(1).double(), train.flatten(1).double()
    scale = math.sqrt(flat.shape[1])

    def per_image(dist: torch.Tensor) -> torch.Tensor:
        """Distances to each of the n training images: the nearer of an image and its mirror image."""
        return torch.minimum(dist[:, :n], dist[:, n:]) if mirrored else dist

    d = torch.cdist(flat, t) / scale
    nearest, index = d.min(1)                           # index: into train, mirror images included (the picture)
    two = per_image(d).topk(2, dim=1, largest=False).values
    ratio = two[:, 0] / two[:, 1]                       # nearest / second-nearest *other* image
    # leave one out: each training image against every other one
    own = per_image(torch.cdist(t[:n], t) / scale)
    own.fill_diagonal_(math.inf)
    two = own.topk(2, dim=1, largest=False).values
    loo, loo_ratio = two[:, 0], two[:, 0] / two[:, 1]

    from PIL import Image
    k = min(args.count, len(x))
    top = torch.cat(list(x[:k, 0]), 1)
    bottom = torch.cat(list(train[index[:k], 0]), 1)
    pixels = ((torch.cat([top, bottom]).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    h, w = pixels.shape
    Image.fromarray(pixels).resize((w * 2, h * 2), Image.NEAREST).save(args.png)

    report = {"samples": args.samples, "decode": args.decode, "reference": args.reference, "n": len(x),
              "training_images": n, "mirror_images": mirrored,
              "nearest_train_rms": quantiles(nearest), "copy_rms": args.copy_rms,
              "copies": float((nearest < args.copy_rms).double().mean()),
              "distinct_nearest_images": int(len(set((index % n).tolist()))),
              "nearest_to_second_ratio": quantiles(ratio),
              "extracted_ratio_below_one_third": float((ratio < 1 / 3).double().mean()),
              "train_leave_one_out_rms": quantiles(loo),
              "train_leave_one_out_ratio": quantiles(loo_ratio),
              "first_pairs_rms": [round(float(v), 4) for v in nearest[:k]]}
    with open(args.report, "w") as f:
        json.dump(report, f, indent=1)
    q, lq = report["nearest_train_rms"], report["train_leave_one_out_rms"]
    print(f"{len(x)} samples: nearest training image at RMS median {q['median']:.3f} (min {q['min']:.3f}); "
          f"{report['copies']:.1%} within {args.copy_rms}; {report['distinct_nearest_images']} distinct nearest "
          f"images; nearest / second nearest median {report['nearest_to_second_ratio']['median']:.2f}, "
          f"{report['extracted_ratio_below_one_third']:.1%} below 1/3. Training images to their nearest other: "
          f"median {lq['median']:.3f} (min {lq['min']:.3f}), nearest / second nearest median "
          f"{report['train_leave_one_out_ratio']['median']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
