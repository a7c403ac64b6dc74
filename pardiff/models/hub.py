"""Real diffusion networks through diffusers (docs/models.md).

- ``load_arch(name)``: a published architecture built from its config, with random
  weights: the real network cost, for latency studies;
- ``load_pretrained(spec)``: a diffusers model or pipeline, from a local folder or a
  hub id, with its trained weights.

Both return a ``DiffusersModel``: the network behind the ``EpsModel`` interface.
"""
from __future__ import annotations

import importlib.util
import json
import os
import warnings

import torch
from diffusers import AutoencoderKL, DiTTransformer2DModel, UNet2DConditionModel, UNet2DModel, VQModel
from huggingface_hub import constants as hf_constants
from huggingface_hub import snapshot_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

from ..schedules import Schedule
from .base import EpsModel
from .graphs import CudaGraphs

# ---------------------------------------------------------------------------------------------
# Architecture configs: the keys of the published config files that define the network or the
# noise schedule (the "_" bookkeeping entries and sampling-only scheduler options left out).
# ---------------------------------------------------------------------------------------------

# google/ddpm-church-256, config.json; google/ddpm-ema-celebahq-256 has the same one.
DDPM_256_CONFIG = {
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 128, 256, 256, 512, 512],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D",
                         "AttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D",
                       "UpBlock2D", "UpBlock2D"],
}

# google/ddpm-church-256 and google/ddpm-ema-celebahq-256, scheduler_config.json (DDPMScheduler).
DDPM_256_SCHEDULER_CONFIG = {
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "num_train_timesteps": 1000,
    "clip_sample": True,
    "variance_type": "fixed_small",
    "trained_betas": None,
}

# stabilityai/stable-diffusion-2-base, unet/config.json.
SD2_BASE_UNET_CONFIG = {
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": True,
}

# stabilityai/stable-diffusion-2-base, scheduler/scheduler_config.json (PNDMScheduler).
SD2_BASE_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "trained_betas": None,
}

# facebook/DiT-XL-2-256, transformer/config.json (saved as Transformer2DModel, which
# diffusers now loads as DiTTransformer2DModel).
DIT_XL_2_256_CONFIG = {
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "attention_head_dim": 72,
    "dropout": 0.0,
    "in_channels": 4,
    "norm_elementwise_affine": False,
    "norm_num_groups": 32,
    "norm_type": "ada_norm_zero",
    "num_attention_heads": 16,
    "num_embeds_ada_norm": 1000,
    "num_layers": 28,
    "out_channels": 8,
    "patch_size": 2,
    "sample_size": 32,
    "upcast_attention": False,
}

# facebook/DiT-XL-2-256, scheduler/scheduler_config.json: the schedule it was trained with.
DIT_SCHEDULER_CONFIG = {
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "trained_betas": None,
}

# arch:<name> -> (model class, model config, scheduler config)
ARCHS = {
    "ddpm-church-256": (UNet2DModel, DDPM_256_CONFIG, DDPM_256_SCHEDULER_CONFIG),
    "ddpm-celebahq-256": (UNet2DModel, DDPM_256_CONFIG, DDPM_256_SCHEDULER_CONFIG),
    "sd2-unet": (UNet2DConditionModel, SD2_BASE_UNET_CONFIG, SD2_BASE_SCHEDULER_CONFIG),
    "dit-xl-2-256": (DiTTransformer2DModel, DIT_XL_2_256_CONFIG, DIT_SCHEDULER_CONFIG),
}

# The schedule assumed when a model comes without a scheduler config: DDPM (Ho et al.).
DEFAULT_SCHEDULER_CONFIG = {
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
}

MODEL_CLASSES = {
    "UNet2DModel": UNet2DModel,
    "UNet2DConditionModel": UNet2DConditionModel,
    "DiTTransformer2DModel": DiTTransformer2DModel,
    "Transformer2DModel": DiTTransformer2DModel,   # DiT checkpoints saved before the rename
}
VAE_CLASSES = {"AutoencoderKL": AutoencoderKL, "VQModel": VQModel}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TEXT_EMBEDDING_LENGTH = 77   # CLIP's token count, as in Stable Diffusion


class DiffusersModel(EpsModel):
    """A diffusers network (UNet2DModel, UNet2DConditionModel, DiTTransformer2DModel) as an ε-predictor.

    ``module`` runs in eval mode on ``device`` in ``dtype``; ``scheduler_config`` (a diffusers
    scheduler config dict) gives the schedule and the prediction type. ``vae`` (AutoencoderKL
    or VQModel), when given, makes this a latent model: ``decode`` maps latents to images.
    """

    def __init__(self, module: torch.nn.Module, scheduler_config: dict, name: str, vae=None,
                 device="cpu", dtype=torch.float32):
        config = module.config
        C = config.in_channels
        if config.out_channels not in (C, 2 * C):
            raise ValueError(f"{name}: out_channels {config.out_channels} is neither in_channels {C} nor "
                             f"{2 * C} (with a learned variance); models with extra input channels, "
                             "such as inpainting ones, are not supported")
        if isinstance(module, UNet2DModel) and (config.get("num_class_embeds") or config.get("class_embed_type")):
            # guidance needs an unconditional prediction: supported when the null class is marked
            # (pardiff train --classes), as DiT's, the last embedding
            if config.get("class_embed_type") or config.get("_pardiff_null_class") != config.num_class_embeds - 1:
                raise ValueError(f"{name}: class-conditional UNet2DModel without a marked null class is not "
                                 "supported (pardiff train --classes marks it: _pardiff_null_class = "
                                 "num_class_embeds - 1 in config.json); DiT models are")
        extra = ("addition_embed_type", "class_embed_type", "encoder_hid_dim_type")
        if isinstance(module, UNet2DConditionModel) and any(config.get(k) for k in extra):
            raise ValueError(f"{name}: UNet2DConditionModel with extra conditioning (addition_embed_type, "
                             "class_embed_type or encoder_hid_dim_type, as in SDXL) is not supported")
        prediction_type = scheduler_config.get("prediction_type", "epsilon")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"{name}: unsupported prediction_type {prediction_type!r}; "
                             f"supported: {', '.join(PREDICTION_TYPES)}")

        self.name = name
        self.device = torch.device(device)
        self.dtype = dtype
        self.module = module.to(self.device).eval().requires_grad_(False)
        if module.dtype != dtype:
            # torch's own Module.to: diffusers' .to() warns about "modules to keep in float32"
            # on every dtype cast, even for models that have none (as these).
            torch.nn.Module.to(module, dtype=dtype)
        self.schedule = Schedule.from_config(dict(scheduler_config))
        self.prediction_type = prediction_type
        size = config.sample_size
        H, W = (size, size) if isinstance(size, int) else tuple(size)
        self.sample_shape = (C, H, W)
        self.num_classes = (config.num_embeds_ada_norm if isinstance(module, DiTTransformer2DModel)
                            else config.get("_pardiff_null_class"))     # labels 0 .. num_classes-1; num_classes is ∅

        # There is no text encoder: a cross-attention UNet attends to one fixed random
        # "prompt embedding", which costs exactly what a real prompt costs.
        self.encoder_hidden_states = None
        if isinstance(module, UNet2DConditionModel):
            g = torch.Generator().manual_seed(0)
            text = torch.randn(1, TEXT_EMBEDDING_LENGTH, config.cross_attention_dim, generator=g)
            self.encoder_hidden_states = text.to(device=self.device, dtype=dtype)

        self.forward = self._network    # the forward pass: _network, or it compiled (enable_compile)
        self.graphs = None              # CudaGraphs of self.forward once enable_cuda_graphs() was called

        # The VAE runs once per image, in float32 (as loaded): SD's VAE overflows in float16.
        self.vae = None if vae is None else vae.to(self.device).eval().requires_grad_(False)

    def eps(self, x: torch.Tensor, t, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        B, C = x.shape[0], self.sample_shape[0]
        timesteps = self.timestep_tensor(t, B)
        # fractional timesteps below 0 (the last fine-grained steps) were never trained: the
        # network sees t = 0 there, while the conversion below uses the interpolated ᾱ
        net_t = timesteps.clamp(min=0).float() if timesteps.is_floating_point() else timesteps
        with torch.inference_mode():
            sample = x.to(device=self.device, dtype=self.dtype)
            labels = self._labels(class_labels, B) if self.num_classes is not None else None
            forward = self.forward if self.graphs is None else self.graphs
            out = forward(sample, net_t, labels)
        # The first C channels are the prediction; the rest (if any) a learned variance.
        # copy=True outside inference mode: callers get an ordinary tensor they may update in place.
        out = out[:, :C].to(device=x.device, dtype=x.dtype, copy=True)
        if self.prediction_type == "epsilon":
            return out
        a = self.schedule.alpha_bar_tensor(timesteps).to(x.device).reshape(B, *[1] * (x.dim() - 1))
        sqrt_a, sqrt_1ma = a.sqrt().to(x.dtype), (1 - a).sqrt().to(x.dtype)
        if self.prediction_type == "v_prediction":   # v = √ᾱ ε − √(1−ᾱ) x0 and x = √ᾱ x0 + √(1−ᾱ) ε
            return sqrt_a * out + sqrt_1ma * x
        return (x - sqrt_a * out) / sqrt_1ma          # out is x0

    def _network(self, sample, net_t, labels):
        """One forward pass: the model output for (sample, timesteps, class labels or None)."""
        if self.encoder_hidden_states is not None:
            text = self.encoder_hidden_states.expand(sample.shape[0], -1, -1)
            return self.module(sample, net_t, encoder_hidden_states=text).sample
        if labels is not None:
            return self.module(sample, timestep=net_t, class_labels=labels).sample
        return self.module(sample, net_t).sample

    def enable_cuda_graphs(self) -> None:
        """Replay the forward pass from CUDA graphs, one captured per input shape (models/graphs.py)."""
        if self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a GPU, not {self.device}")
        self.graphs = CudaGraphs(self.forward, self.device)

    def enable_compile(self) -> None:
        """Run the forward pass through ``torch.compile`` (TorchInductor: fused kernels generated for
        this network). Each input shape compiles on first use; from the second batch size on,
        dynamo compiles once more with the batch dimension dynamic and reuses that for the rest.
        The numbers differ from eager ones in the last bits (other kernels), like another GPU's."""
        if self.device.type != "cuda":
            raise ValueError(f"torch.compile is used on a GPU only, not {self.device}")
        self.forward = torch.compile(self._network)
        if self.graphs is not None:             # the graphs capture what runs: the compiled pass
            self.graphs = CudaGraphs(self.forward, self.device)

    def _labels(self, class_labels, batch: int) -> torch.Tensor:
        """(B,) labels: -1 (unconditional) and None become the null class, num_classes (DiT's and
        pardiff train --classes' last embedding)."""
        if class_labels is None:
            return torch.full((batch,), self.num_classes, dtype=torch.long, device=self.device)
        labels = torch.as_tensor(class_labels, device=self.device).long().reshape(-1).expand(batch)
        return torch.where(labels < 0, torch.full_like(labels, self.num_classes), labels)

    @property
    def image_channels(self) -> int:
        return self.sample_shape[0] if self.vae is None else self.vae.config.out_channels

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1] through the VAE; pixel-space models return x."""
        if self.vae is None:
            return x
        scale = self.vae.config.get("scaling_factor") or 1.0
        with torch.inference_mode():
            images = self.vae.decode(x.to(device=self.device, dtype=torch.float32) / scale).sample
        return images.clamp(-1, 1).to(device=x.device, dtype=x.dtype, copy=True)


# ---------------------------------------------------------------------------------------------
# arch:<name>
# ---------------------------------------------------------------------------------------------

def build_arch(name: str, device="cpu") -> torch.nn.Module:
    """The network of ``arch:<name>`` with random weights, built directly on ``device``.

    The weights come from torch's RNG seeded with 0 (on a fork, so the caller's RNG state is
    untouched): the same weights on every build on the same kind of device. On the ``meta``
    device nothing is allocated, which is how the tests count parameters of the big models.
    """
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(ARCHS)}")
    model_class, config, _ = ARCHS[name]
    device = torch.device(device)
    cuda_devices = range(torch.cuda.device_count()) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices), torch.device(device):
        torch.manual_seed(0)
        return model_class.from_config(config)


def num_parameters(module: torch.nn.Module) -> int:
    """The number of parameters (works on meta-device modules)."""
    return sum(p.numel() for p in module.parameters())


def load_arch(name: str, device="cpu", dtype=torch.float32) -> DiffusersModel:
    """``arch:<name>``: a published architecture with random weights, for latency studies."""
    module = build_arch(name, device)
    return DiffusersModel(module, ARCHS[name][2], name=f"arch:{name}", device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Trained weights: a local folder or a hub id
# ---------------------------------------------------------------------------------------------

def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _offline() -> bool:
    """HF_HUB_OFFLINE, read now: huggingface_hub reads it once, at import."""
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is None:
        return bool(hf_constants.HF_HUB_OFFLINE)
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def _has_config(root: str, subfolder: str) -> bool:
    return os.path.isfile(os.path.join(root, subfolder, "config.json"))


def _find_components(root: str, spec: str):
    """What to load from a folder holding the configs of ``spec``.

    Returns (model subfolder, model class, scheduler config or None, VAE subfolder or None,
    VAE class or None); a subfolder of "" is the folder itself.
    """
    vae_sub = vae_class = None
    index_path = os.path.join(root, "model_index.json")
    if os.path.isfile(index_path):
        index = _read_json(index_path)
        # Components saved as [null, null] (e.g. a disabled safety checker) are absent.
        present = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and any(v)]
        text = [k for k in present if k.startswith(("text_encoder", "tokenizer"))]
        if text:
            raise ValueError(
                f"{spec!r} is a text-conditional pipeline ({index.get('_class_name', 'unknown')}, with "
                f"{', '.join(text)}): pardiff has no text encoder, so it cannot condition on prompts. "
                "For latency studies of the Stable Diffusion 2 UNet use --model arch:sd2-unet "
                "(random weights, a fixed random text embedding).")
        model_sub = next((k for k in ("unet", "transformer") if _has_config(root, k)), None)
        if model_sub is None:
            if not _has_config(root, ""):
                raise ValueError(f"{spec!r} is a pipeline with no unet/ or transformer/ model")
            model_sub = ""   # old layout: the model's files at the top of the pipeline folder
        vae_sub = next((k for k in ("vae", "vqvae") if _has_config(root, k)), None)
        scheduler_paths = [os.path.join(root, "scheduler", "scheduler_config.json"),
                           os.path.join(root, "scheduler_config.json")]
    else:
        if not _has_config(root, ""):
            raise ValueError(f"{spec!r} holds neither a model config.json nor a pipeline model_index.json")
        model_sub = ""
        # Beside the model, or the pipeline's scheduler when spec is a pipeline's unet/ folder.
        scheduler_paths = [os.path.join(root, "scheduler_config.json"),
                           os.path.join(root, os.pardir, "scheduler", "scheduler_config.json")]

    config = _read_json(os.path.join(root, model_sub, "config.json"))
    class_name = config.get("_class_name")
    if class_name not in MODEL_CLASSES:
        raise ValueError(f"{spec!r}: model class {class_name!r} is not supported; "
                         f"supported: {', '.join(MODEL_CLASSES)}")
    if class_name == "Transformer2DModel" and config.get("norm_type") != "ada_norm_zero":
        raise ValueError(f"{spec!r}: a Transformer2DModel with norm_type {config.get('norm_type')!r} is not "
                         "a DiT; only class-conditional DiT transformers (ada_norm_zero) are supported")
    if vae_sub is not None:
        vae_class_name = _read_json(os.path.join(root, vae_sub, "config.json")).get("_class_name")
        if vae_class_name not in VAE_CLASSES:
            raise ValueError(f"{spec!r}: VAE class {vae_class_name!r} is not supported; "
                             f"supported: {', '.join(VAE_CLASSES)}")
        vae_class = VAE_CLASSES[vae_class_name]
    scheduler_path = next((p for p in scheduler_paths if os.path.isfile(p)), None)
    scheduler_config = _read_json(scheduler_path) if scheduler_path else None
    return model_sub, MODEL_CLASSES[class_name], scheduler_config, vae_sub, vae_class


def load_pretrained(spec: str, device="cpu", dtype=torch.float32) -> DiffusersModel:
    """A diffusers model or pipeline with its weights, from a local folder or a hub id.

    A model folder holds ``config.json`` (UNet2DModel, UNet2DConditionModel or a DiT
    transformer) and optionally ``scheduler_config.json``; a pipeline folder holds
    ``model_index.json`` with ``unet/`` or ``transformer/``, ``scheduler/`` and optionally
    ``vae/`` or ``vqvae/``. A hub id is read from the Hugging Face cache, or downloaded
    unless HF_HUB_OFFLINE is set.
    """
    local = os.path.isdir(spec)
    hub_kwargs = dict(cache_dir=hf_constants.HF_HUB_CACHE, local_files_only=_offline())
    try:
        # For a hub id, fetch only the JSON configs first: enough to decide what to load.
        root = spec if local else snapshot_download(spec, allow_patterns=["*.json"], **hub_kwargs)
        model_sub, model_class, scheduler_config, vae_sub, vae_class = _find_components(root, spec)
        # without accelerate diffusers falls back to a plain load and warns at every load: ask for that load
        load_kwargs = dict(hub_kwargs, low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None)
        module = model_class.from_pretrained(spec, subfolder=model_sub or None, torch_dtype=dtype, **load_kwargs)
        vae = None
        if vae_class is not None:
            vae = vae_class.from_pretrained(spec, subfolder=vae_sub, torch_dtype=torch.float32, **load_kwargs)
    except (OSError, EntryNotFoundError, HfHubHTTPError) as e:
        if local:
            raise ValueError(f"could not load the diffusers model in {spec!r}: {e}") from e
        if hub_kwargs["local_files_only"]:
            how = "HF_HUB_OFFLINE is set, so only the cache was searched"
        else:
            how = "it is not in the cache and could not be downloaded"
        raise ValueError(
            f"could not load model {spec!r}: its weights could not be loaded offline / from the Hugging Face "
            f"cache ({hub_kwargs['cache_dir']}): {how}. Download it where there is network "
            f"(`hf download {spec}`) into the same HF_HOME, or pass a local folder. ({type(e).__name__})"
        ) from e

    if scheduler_config is None:
        warnings.warn(f"{spec}: no scheduler config found; assuming the DDPM schedule "
                      "(linear β 1e-4 .. 0.02, 1000 steps, ε-prediction)", stacklevel=2)
        scheduler_config = DEFAULT_SCHEDULER_CONFIG
    if isinstance(module, UNet2DConditionModel):
        warnings.warn(f"{spec}: a cross-attention UNet without its text encoder: it is conditioned on a "
                      "fixed random embedding, not a prompt, so its samples are not meaningful images",
                      stacklevel=2)
    return DiffusersModel(module, scheduler_config, name=spec, vae=vae, device=device, dtype=dtype)
