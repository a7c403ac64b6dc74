"""``pardiff train``: a small DDPM of our own, on data that ships offline: pixel space, or latent.

The network is a diffusers ``UNet2DModel`` trained with Ho et al.'s ε-loss under the DDPM
schedule (linear β 1e-4 … 0.02, T = 1000, as ``DDPMScheduler``'s defaults), so the samplers
run on it exactly as on the published DDPM checkpoints. The output folder is what
``save_pretrained`` writes plus ``scheduler_config.json`` beside it, which is where
``load_pretrained`` looks for the schedule: ``--model FOLDER`` loads it.

With ``--classes`` the UNet is class-conditional on the data set's labels (``lfw``: face /
non-face; ``digits``: 0–9; ``photos``: the photograph, 0–9) for classifier-free guidance (Ho & Salimans 2022): one more class
embedding, the null class, stands in for the label of a ``--class-drop`` fraction of each batch,
so the one network predicts both ε(x, t, c) and ε(x, t, ∅). The folder's config marks the null class (``_pardiff_null_class``:
models/hub.py reads it).

With ``--vae-channels`` it trains a latent diffusion model (Rombach et al. 2022) instead: first a
diffusers ``AutoencoderKL`` (reconstruction + a small KL term, as the LDM paper's KL-regularised
autoencoders, without their perceptual and adversarial losses), then the UNet with the same ε-loss on
its latents, scaled to unit variance (the VAE's ``scaling_factor``). The folder is a pipeline:
``model_index.json`` (diffusers' ``LDMPipeline``), ``unet/``, ``vqvae/`` and ``scheduler/``.

Images are flipped left to right at random where a mirror image is still one of the data
(``lfw``, ``photos``; not ``digits``). Every random draw (batch indices, flips, t, noise) comes from one CPU
generator seeded by ``--seed``, so the data stream is the same on any device; the weights come out
the same bit for bit on the CPU, and on a GPU up to CUDA's non-deterministic kernels.
"""
from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import time
from dataclasses import asdict, dataclass

from .config import ConfigError, check_folder_of, check_output
from .data import DATASETS, MIRRORED   # torch is imported only when training: the parser imports this module

CLASS_DROP = 0.1    # --class-drop's default: the usual rate (Ho & Salimans train with 0.1 or 0.2)


@dataclass
class TrainConfig:
    out: str
    data: str = "lfw"
    size: int = 32
    channels: str = "64,128,128"
    steps: int = 4000
    batch: int = 256
    lr: float = 5e-4
    warmup: int = 100
    ema: float = 0.999
    seed: int = 0
    device: str = "auto"
    bf16: bool = False
    save_dtype: str = "float16"
    log: str | None = None
    vae_channels: str | None = None      # a latent model: the autoencoder's widths per level
    latent_channels: int = 4
    vae_steps: int = 2000
    kl_weight: float = 1e-6
    classes: bool = False                # class-conditional on the data set's labels, with a null class
    class_drop: float | None = None      # with classes: the fraction of labels trained as the null class (CLASS_DROP)
    clip_sample: str = "auto"            # the saved scheduler's x̂_0 clamp: auto (on for images, off for latents) | on | off

    def channel_list(self) -> list[int]:
        return [int(c) for c in self.channels.split(",")]

    def vae_channel_list(self) -> list[int]:
        return [int(c) for c in self.vae_channels.split(",")] if self.vae_channels else []

    def unet_size(self) -> int:
        """The UNet's input size: the image's, or the latent's (the VAE halves it per level but the first)."""
        return self.size // 2 ** (len(self.vae_channel_list()) - 1) if self.vae_channels else self.size

    def validate(self) -> None:
        if self.data not in DATASETS:
            raise ConfigError("--data", f"one of {', '.join(DATASETS)}; got {self.data!r}")
        try:
            channels = self.channel_list()
        except ValueError:
            raise ConfigError("--channels", f"comma-separated widths like 64,128,128; got {self.channels!r}") from None
        if not channels or min(channels) < 8 or any(c % 8 for c in channels):
            raise ConfigError("--channels", f"widths must be multiples of 8 (the group norm's groups); got {self.channels!r}")
        if self.vae_channels is not None:
            try:
                vae = self.vae_channel_list()
            except ValueError:
                vae = []
            if not vae or min(vae) < 8 or any(c % 8 for c in vae):
                raise ConfigError("--vae-channels", f"comma-separated widths, multiples of 8, like 32,64,64; "
                                                    f"got {self.vae_channels!r}")
            if self.size % 2 ** (len(vae) - 1):
                raise ConfigError("--size", f"must be divisible by {2 ** (len(vae) - 1)} (the autoencoder's "
                                            f"{len(vae)} levels); got {self.size}")
            for flag, value in (("--latent-channels", self.latent_channels), ("--vae-steps", self.vae_steps)):
                if value < 1:
                    raise ConfigError(flag, f"must be >= 1; got {value}")
            if not self.kl_weight >= 0:
                raise ConfigError("--kl-weight", f"must be >= 0; got {self.kl_weight}")
        size, what = self.unet_size(), ("the latent size" if self.vae_channels else "--size")
        if size < 4 or size % 2 ** (len(channels) - 1):
            flag = "--vae-channels" if self.vae_channels else "--size"
            raise ConfigError(flag, f"{what} must be >= 4 and divisible by {2 ** (len(channels) - 1)} "
                                    f"({len(channels)} UNet levels); got {size}")
        if not self.vae_channels and self.size < 8:
            raise ConfigError("--size", f"must be >= 8; got {self.size}")
        for flag, value in (("--steps", self.steps), ("--batch", self.batch)):
            if value < 1:
                raise ConfigError(flag, f"must be >= 1; got {value}")
        if not self.lr > 0:
            raise ConfigError("--lr", f"must be > 0; got {self.lr}")
        if self.warmup < 0:
            raise ConfigError("--warmup", f"must be >= 0; got {self.warmup}")
        if not 0 <= self.ema < 1:
            raise ConfigError("--ema", f"EMA decay must be in [0, 1) (0: no EMA); got {self.ema}")
        if self.class_drop is not None and not self.classes:
            raise ConfigError("--class-drop", "only with --classes (a class-conditional model)")
        if self.classes and self.class_drop is None:
            self.class_drop = CLASS_DROP
        if self.classes and not 0 < self.class_drop < 1:
            raise ConfigError("--class-drop", f"a fraction in (0, 1): some labels must train the null class; "
                                              f"got {self.class_drop}")
        if self.classes and self.data == "lfw-faces":
            raise ConfigError("--classes", "lfw-faces has one class (faces): train on --data lfw (faces and non-faces)")
        if self.clip_sample not in ("auto", "on", "off"):
            raise ConfigError("--clip-sample", f"auto, on or off; got {self.clip_sample!r}")
        if self.clip_sample == "on" and self.vae_channels:
            raise ConfigError("--clip-sample", "latents are not bounded to [-1, 1]: a latent model's scheduler does "
                                               "not clamp x̂_0")
        if self.save_dtype not in ("float32", "float16"):
            raise ConfigError("--save-dtype", f"float32 or float16; got {self.save_dtype!r}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError("--device", f"auto, cpu or cuda[:N]; got {self.device!r}")
        import torch
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("--device", "cuda was asked for but torch sees no GPU")
        if os.path.isfile(self.out):
            raise ConfigError("--out", f"{self.out!r} is a file; give a folder to write the model into")
        check_folder_of("--out", self.out)       # checked now, not after the training
        if self.log:
            check_output("--log", self.log, (".json",))


def unet_config(size: int, channels: list[int], in_channels: int = 1, classes: int = 0) -> dict:
    """A DDPM UNet: two ResNet blocks per level, self-attention at the second level (half size);
    with ``classes`` > 0, class-conditional with classes + 1 embeddings (the last: the null class)."""
    levels = len(channels)
    down = ["AttnDownBlock2D" if i == 1 else "DownBlock2D" for i in range(levels)]
    up = ["AttnUpBlock2D" if i == levels - 2 else "UpBlock2D" for i in range(levels)]
    return dict(sample_size=size, in_channels=in_channels, out_channels=in_channels, block_out_channels=channels,
                layers_per_block=2, down_block_types=down, up_block_types=up,
                norm_num_groups=32 if all(c % 32 == 0 for c in channels) else 8,
                **({"num_class_embeds": classes + 1} if classes else {}))


def vae_config(size: int, channels: list[int], latent_channels: int, image_channels: int = 1) -> dict:
    """An AutoencoderKL for images of ``image_channels`` (1 gray, 3 RGB): one ResNet block per level,
    down by 2 per level but the last."""
    levels = len(channels)
    return dict(in_channels=image_channels, out_channels=image_channels,
                down_block_types=["DownEncoderBlock2D"] * levels,
                up_block_types=["UpDecoderBlock2D"] * levels, block_out_channels=channels, layers_per_block=1,
                latent_channels=latent_channels, norm_num_groups=8, sample_size=size)


def scheduler(clip_sample: bool = True):
    """DDPMScheduler's defaults: linear β 1e-4 … 0.02 over 1000 steps, x̂_0 clipped to [-1, 1] for
    images; latents (unit variance, not bounded) are not clipped, as in the published LDM configs."""
    from diffusers import DDPMScheduler
    return DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                         clip_sample=clip_sample)


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then a cosine decay to a tenth: the usual recipe for a short run."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _device(cfg: TrainConfig):
    import torch
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _fit(model, loss_fn, steps: int, cfg: TrainConfig, device, ema: bool) -> dict:
    """AdamW over ``steps`` batches, ``loss_fn(step)`` giving each batch's loss; the EMA of the
    weights (cfg.ema, when ``ema``) is copied into the model at the end. Returns the loss curve and
    timings."""
    import torch
    model.to(device).train()
    shadow = [p.detach().clone() for p in model.parameters()] if ema else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    scheduler_lr = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps, cfg.warmup))
    every = max(1, steps // 200)                         # at most ~200 points on the loss curve
    curve, window = [], []
    start = time.perf_counter()
    for step in range(steps):
        loss = loss_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler_lr.step()
        if shadow is not None:
            # EMA with diffusers' warm-up, so the early random weights fade out fast
            decay = min(cfg.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(shadow, [p.detach() for p in model.parameters()], 1 - decay)
        if step == min(10, steps - 1):                   # the first steps include warm-up (cuDNN, allocator)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            steady_from, steady_start = step + 1, time.perf_counter()
        window.append(loss.detach())
        if len(window) == every or step == steps - 1:
            curve.append([step + 1, float(torch.stack(window).mean())])
            window = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    end = time.perf_counter()
    if shadow is not None:
        with torch.no_grad():
            for p, e in zip(model.parameters(), shadow):
                p.copy_(e)
    model.eval()
    return {"loss_curve": curve, "final_loss": curve[-1][1], "wall_s": end - start, "s_per_step": (end - start) / steps,
            "s_per_step_after_10": (end - steady_start) / max(1, steps - steady_from)}


def _train_vae(cfg: TrainConfig, images, device, gen):
    """The autoencoder: per image, the summed squared reconstruction error + kl_weight × the summed KL
    divergence of the posterior to N(0, I) (the LDM paper's weighting, 1e-6, without its perceptual and
    adversarial terms: a short run on 32×32 images). Returns the trained AutoencoderKL, its posterior
    over ``images`` and its log."""
    import torch
    from diffusers import AutoencoderKL
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 2)
        vae = AutoencoderKL(**vae_config(cfg.size, cfg.vae_channel_list(), cfg.latent_channels, images.shape[1]))

    def loss_fn(step):
        idx = torch.randint(len(images), (cfg.batch,), generator=gen).to(device)
        x = images[idx]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            recon = vae.decode(z).sample
        rec = ((recon.float() - x) ** 2).flatten(1).sum(1).mean()
        return rec + cfg.kl_weight * posterior.kl().mean()

    log = _fit(vae, loss_fn, cfg.vae_steps, cfg, device, ema=False)
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.mean).sample
    log["reconstruction_rms"] = float(((recon - images) ** 2).mean().sqrt())
    log["parameters"] = sum(p.numel() for p in vae.parameters())
    return vae, posterior, log


def train(cfg: TrainConfig) -> dict:
    """Train, write the model folder to ``cfg.out`` (and the log to ``cfg.log``); returns the log."""
    import diffusers
    import torch
    import torch.nn.functional as F
    from diffusers import UNet2DModel

    from .data import load_dataset
    from .io import write_json

    cfg.validate()
    device = _device(cfg)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    data, labels = load_dataset(cfg.data, cfg.size)
    data, labels = data.to(device), labels.to(device)
    classes = int(labels.max()) + 1 if cfg.classes else 0      # the null class is index `classes`
    # the clamp only matters when sampling (the ε-loss never sees it); it is saved with the model
    sched = scheduler(clip_sample=cfg.clip_sample == "on" or (cfg.clip_sample == "auto" and not cfg.vae_channels))
    alpha_bar = sched.alphas_cumprod.to(device=device, dtype=torch.float32)
    T = len(alpha_bar)
    gen = torch.Generator().manual_seed(cfg.seed + 1)    # the data stream

    vae = vae_log = None
    if cfg.vae_channels:
        # the autoencoder sees every image (and its mirror image); the UNet draws latents from its posterior
        images = torch.cat([data, data.flip(-1)]) if MIRRORED[cfg.data] else data
        vae, posterior, vae_log = _train_vae(cfg, images, device, gen)
        mean, std = posterior.mean.detach(), posterior.std.detach()
        scale = 1.0 / float(mean.std())                  # latents of unit variance, as Stable Diffusion's 0.18215
        vae.register_to_config(scaling_factor=scale)
        vae_log["scaling_factor"] = scale
        channels_in = cfg.latent_channels

        def clean_batch(idx, flip):
            j = idx + len(data) * flip.long()
            noise = torch.randn(mean[j].shape, generator=gen).to(device)
            return (mean[j] + std[j] * noise) * scale
    else:
        channels_in = data.shape[1]

        def clean_batch(idx, flip):
            x0 = data[idx]
            return torch.where(flip[:, None, None, None], x0.flip(-1), x0)     # random horizontal flips

    unet_cfg = unet_config(cfg.unet_size(), cfg.channel_list(), channels_in, classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)                      # the initial weights
        model = UNet2DModel(**unet_cfg)
    if classes:
        model.register_to_config(_pardiff_null_class=classes)   # kept by save_pretrained / from_pretrained

    def class_batch(idx):
        """The labels of a batch, a cfg.class_drop fraction of them replaced by the null class."""
        drop = (torch.rand(len(idx), generator=gen) < cfg.class_drop).to(device)
        return torch.where(drop, classes, labels[idx])

    def loss_fn(step):
        idx = torch.randint(len(data), (cfg.batch,), generator=gen)
        flip = torch.rand(cfg.batch, generator=gen) < 0.5
        flip &= MIRRORED[cfg.data]                       # drawn either way: every data set has the same stream
        t = torch.randint(0, T, (cfg.batch,), generator=gen)
        idx, flip, t = (v.to(device, non_blocking=True) for v in (idx, flip, t))
        x0 = clean_batch(idx, flip)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        a = alpha_bar[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        y = class_batch(idx) if classes else None        # drawn after the noise: unconditional runs keep their stream
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            pred = model(xt, t, class_labels=y).sample
        return F.mse_loss(pred.float(), noise)

    unet_log = _fit(model, loss_fn, cfg.steps, cfg, device, ema=cfg.ema > 0)

    # torch's own Module.to: diffusers' .to() warns about "modules to keep in float32" (there are none)
    save_dtype = getattr(torch, cfg.save_dtype)
    torch.nn.Module.to(model, device="cpu", dtype=save_dtype)
    os.makedirs(cfg.out, exist_ok=True)
    if vae is None:
        model.save_pretrained(cfg.out, safe_serialization=True)
        sched.save_pretrained(cfg.out)
    else:
        # a pipeline folder diffusers' LDMPipeline loads (its vqvae slot takes any decoder with
        # .decode(z).sample and config.scaling_factor); pardiff finds unet/, vqvae/ and scheduler/
        model.save_pretrained(os.path.join(cfg.out, "unet"), safe_serialization=True)
        torch.nn.Module.to(vae, device="cpu", dtype=save_dtype)
        vae.save_pretrained(os.path.join(cfg.out, "vqvae"), safe_serialization=True)
        sched.save_pretrained(os.path.join(cfg.out, "scheduler"))
        write_json(os.path.join(cfg.out, "model_index.json"), {
            "_class_name": "LDMPipeline", "_diffusers_version": diffusers.__version__,
            "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"],
            "vqvae": ["diffusers", "AutoencoderKL"]})

    log = {"config": asdict(cfg), "unet": unet_cfg, **unet_log,
           "parameters": sum(p.numel() for p in model.parameters()), "images": len(data),
           "classes": classes,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
           "threads": torch.get_num_threads(), "versions": _versions(diffusers.__version__),
           "date": time.strftime("%Y-%m-%d")}
    if vae_log is not None:
        log["vae"] = {"config": dict(vae.config), **vae_log}
    if cfg.log:
        write_json(cfg.log, log)
    return log


def _versions(diffusers_version: str) -> dict:
    import numpy
    import torch
    versions = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers_version,
                "numpy": numpy.__version__, "cuda": torch.version.cuda}
    for package in ("scikit-image", "scikit-learn"):     # the data sets' sources
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions
