"""``pardiff train``: a small pixel-space DDPM of our own, on data that ships offline.

The network is a diffusers ``UNet2DModel`` trained with Ho et al.'s ε-loss under the DDPM
schedule (linear β 1e-4 … 0.02, T = 1000, as ``DDPMScheduler``'s defaults), so the samplers
run on it exactly as on the published DDPM checkpoints. The output folder is what
``save_pretrained`` writes plus ``scheduler_config.json`` beside it, which is where
``load_pretrained`` looks for the schedule: ``--model FOLDER`` loads it.

Every random draw (batch indices, flips, t, noise) comes from one CPU generator seeded by
``--seed``, so the data stream is the same on any device; the weights come out the same bit
for bit on the CPU, and on a GPU up to CUDA's non-deterministic kernels.
"""
from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import asdict, dataclass

from .config import ConfigError, check_folder_of, check_output
from .data import DATASETS   # torch is imported only when training: the parser imports this module


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

    def channel_list(self) -> list[int]:
        return [int(c) for c in self.channels.split(",")]

    def validate(self) -> None:
        if self.data not in DATASETS:
            raise ConfigError("--data", f"one of {', '.join(DATASETS)}; got {self.data!r}")
        try:
            channels = self.channel_list()
        except ValueError:
            raise ConfigError("--channels", f"comma-separated widths like 64,128,128; got {self.channels!r}") from None
        if not channels or min(channels) < 8 or any(c % 8 for c in channels):
            raise ConfigError("--channels", f"widths must be multiples of 8 (the group norm's groups); got {self.channels!r}")
        if self.size < 8 or self.size % 2 ** (len(channels) - 1):
            raise ConfigError("--size", f"must be >= 8 and divisible by {2 ** (len(channels) - 1)} "
                                       f"({len(channels)} resolution levels); got {self.size}")
        for flag, value in (("--steps", self.steps), ("--batch", self.batch)):
            if value < 1:
                raise ConfigError(flag, f"must be >= 1; got {value}")
        if not self.lr > 0:
            raise ConfigError("--lr", f"must be > 0; got {self.lr}")
        if self.warmup < 0:
            raise ConfigError("--warmup", f"must be >= 0; got {self.warmup}")
        if not 0 <= self.ema < 1:
            raise ConfigError("--ema", f"EMA decay must be in [0, 1) (0: no EMA); got {self.ema}")
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


def unet_config(size: int, channels: list[int]) -> dict:
    """A DDPM UNet: two ResNet blocks per level, self-attention at the second level (half size)."""
    levels = len(channels)
    down = ["AttnDownBlock2D" if i == 1 else "DownBlock2D" for i in range(levels)]
    up = ["AttnUpBlock2D" if i == levels - 2 else "UpBlock2D" for i in range(levels)]
    return dict(sample_size=size, in_channels=1, out_channels=1, block_out_channels=channels,
                layers_per_block=2, down_block_types=down, up_block_types=up,
                norm_num_groups=32 if all(c % 32 == 0 for c in channels) else 8)


def scheduler():
    """DDPMScheduler's defaults: linear β 1e-4 … 0.02 over 1000 steps, x̂_0 clipped to [-1, 1]."""
    from diffusers import DDPMScheduler
    return DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then a cosine decay to a tenth: the usual recipe for a short run."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _device(cfg: TrainConfig):
    import torch
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def train(cfg: TrainConfig) -> dict:
    """Train, write the model folder to ``cfg.out`` (and the log to ``cfg.log``); returns the log."""
    import diffusers
    import torch
    import torch.nn.functional as F
    from diffusers import UNet2DModel

    from .data import load_dataset

    cfg.validate()
    device = _device(cfg)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    data, _ = load_dataset(cfg.data, cfg.size)
    data = data.to(device)
    sched = scheduler()
    alpha_bar = sched.alphas_cumprod.to(device=device, dtype=torch.float32)
    T = len(alpha_bar)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)                      # the initial weights
        model = UNet2DModel(**unet_config(cfg.size, cfg.channel_list()))
    model.to(device).train()
    ema = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    scheduler_lr = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, cfg))
    gen = torch.Generator().manual_seed(cfg.seed + 1)    # the data stream

    every = max(1, cfg.steps // 200)                     # at most ~200 points on the loss curve
    curve, window = [], []
    start = time.perf_counter()
    for step in range(cfg.steps):
        idx = torch.randint(len(data), (cfg.batch,), generator=gen)
        flip = torch.rand(cfg.batch, generator=gen) < 0.5
        t = torch.randint(0, T, (cfg.batch,), generator=gen)
        noise = torch.randn(cfg.batch, *data.shape[1:], generator=gen)
        idx, flip, t, noise = (v.to(device, non_blocking=True) for v in (idx, flip, t, noise))
        x0 = data[idx]
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)     # random horizontal flips
        a = alpha_bar[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            pred = model(xt, t).sample
        loss = F.mse_loss(pred.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler_lr.step()
        # EMA with diffusers' warm-up, so the early random weights fade out fast
        decay = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1 - decay)
        if step == min(10, cfg.steps - 1):               # the first steps include warm-up (cuDNN, allocator)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            steady_from, steady_start = step + 1, time.perf_counter()
        window.append(loss.detach())
        if len(window) == every or step == cfg.steps - 1:
            curve.append([step + 1, float(torch.stack(window).mean())])
            window = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    end = time.perf_counter()
    wall = end - start
    steady = (end - steady_start) / max(1, cfg.steps - steady_from)

    with torch.no_grad():
        for p, e in zip(model.parameters(), ema):
            p.copy_(e)
    # torch's own Module.to: diffusers' .to() warns about "modules to keep in float32" (there are none)
    torch.nn.Module.to(model.eval(), device="cpu", dtype=getattr(torch, cfg.save_dtype))
    os.makedirs(cfg.out, exist_ok=True)
    model.save_pretrained(cfg.out, safe_serialization=True)
    sched.save_pretrained(cfg.out)

    log = {"config": asdict(cfg), "unet": unet_config(cfg.size, cfg.channel_list()),
           "parameters": sum(p.numel() for p in model.parameters()), "images": len(data),
           "loss_curve": curve, "final_loss": curve[-1][1], "wall_s": wall, "s_per_step": wall / cfg.steps,
           "s_per_step_after_10": steady,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
           "threads": torch.get_num_threads(), "versions": _versions(diffusers.__version__),
           "date": time.strftime("%Y-%m-%d")}
    if cfg.log:
        from .io import write_json
        write_json(cfg.log, log)
    return log


def _versions(diffusers_version: str) -> dict:
    import numpy
    import torch
    versions = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers_version,
                "numpy": numpy.__version__, "cuda": torch.version.cuda}
    try:
        import skimage
        versions["scikit-image"] = skimage.__version__
    except ImportError:
        pass
    return versions
