"""pardiff.models.hub: the arch configs, load_arch, and load_pretrained on folders built here."""
import json

import numpy as np
import pytest
import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, DiTTransformer2DModel, UNet2DConditionModel,
                       UNet2DModel, VQModel)

from pardiff.models import ARCH_NAMES, load_model
from pardiff.models import hub
from pardiff.models.hub import DiffusersModel, build_arch, load_pretrained, num_parameters


# ---------------------------------------------------------------------------------------------
# arch:<name>
# ---------------------------------------------------------------------------------------------

def test_arch_names_match_dispatch():
    assert set(hub.ARCHS) == set(ARCH_NAMES)


# Published sizes: DDPM's LSUN / CelebA-HQ 256 models 113.7 M (Ho et al.: "114 million"),
# the SD 2 UNet 865.9 M, DiT-XL/2 675 M (Peebles & Xie, Table 1).
@pytest.mark.parametrize("name, published", [
    ("ddpm-church-256", 113.7e6),
    ("ddpm-celebahq-256", 113.7e6),
    ("sd2-unet", 865.9e6),
])
def test_arch_parameter_counts(name, published):
    n = num_parameters(build_arch(name, "meta"))   # meta: nothing allocated
    assert abs(n - published) <= 0.005 * published, n


def test_dit_parameter_count():
    module = build_arch("dit-xl-2-256", "meta")
    assert isinstance(module, DiTTransformer2DModel)
    # diffusers gives each of the 28 blocks its own copy of DiT's timestep + class embedder
    # (the converted checkpoint repeats the shared one), so it stores 749.8 M parameters;
    # without the 27 copies it is the paper's 675 M.
    total = num_parameters(module)
    copies = sum(num_parameters(block.norm1.emb) for block in module.transformer_blocks[1:])
    assert abs(total - 749.8e6) <= 0.005 * 749.8e6, total
    assert abs(total - copies - 675e6) <= 0.005 * 675e6, total - copies


def test_arch_ddpm_church_256():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    model = load_model("arch:ddpm-church-256")
    assert torch.equal(torch.rand(3), expected_next)   # building leaves the caller's RNG alone

    assert isinstance(model, DiffusersModel)
    assert model.name == "arch:ddpm-church-256"
    assert model.sample_shape == (3, 256, 256)
    assert model.num_classes is None
    assert model.schedule.T == 1000
    np.testing.assert_allclose(model.schedule.betas, np.linspace(1e-4, 0.02, 1000))
    assert model.schedule.clip_sample
    assert abs(num_parameters(model.module) - 113_673_219) < 1000

    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    eps = model.eps(x, 500)
    assert eps.shape == x.shape and eps.dtype == torch.float32
    assert torch.isfinite(eps).all()
    assert not eps.is_inference()
    assert torch.equal(model.decode(x), x)            # pixel space

    # Reproducible: the same seeded weights on every build.
    again = build_arch("ddpm-church-256")
    assert torch.equal(again.conv_in.weight, model.module.conv_in.weight)


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown architecture"):
        hub.load_arch("nope")


# ---------------------------------------------------------------------------------------------
# The wrapper on tiny networks
# ---------------------------------------------------------------------------------------------

def tiny_unet(**kw):
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=kw.pop("in_channels", 3), out_channels=kw.pop("out_channels", 3),
                       block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), **kw)


def tiny_dit():
    torch.manual_seed(0)
    return DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                 num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=1000)


def test_learned_variance_and_class_labels():
    dit = tiny_dit()
    model = DiffusersModel(dit, {}, name="tiny-dit")
    assert model.num_classes == 1000 and model.sample_shape == (4, 8, 8)
    x = torch.randn(3, 4, 8, 8)
    t = torch.tensor([3, 500, 999])
    labels = torch.tensor([7, -1, 999])
    out = dit(x, timestep=t, class_labels=torch.tensor([7, 1000, 999])).sample   # -1 -> null class 1000
    assert out.shape[1] == 8
    torch.testing.assert_close(model.eps(x, t, labels), out[:, :4])
    null = dit(x, timestep=t, class_labels=torch.full((3,), 1000)).sample
    torch.testing.assert_close(model.eps(x, t), null[:, :4])


def test_cross_attention_unet_uses_fixed_embedding():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                layers_per_block=1, norm_num_groups=4, cross_attention_dim=16,
                                attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    model = DiffusersModel(unet, {}, name="tiny-sd")
    assert model.encoder_hidden_states.shape == (1, 77, 16)
    x = torch.randn(2, 4, 8, 8)
    expected = unet(x, torch.tensor([10, 10]), encoder_hidden_states=model.encoder_hidden_states.expand(2, -1, -1))
    torch.testing.assert_close(model.eps(x, 10), expected.sample)


def test_float16_casts_back():
    model = DiffusersModel(tiny_unet(), {}, name="tiny", dtype=torch.bfloat16)
    x = torch.randn(2, 3, 8, 8)
    eps = model.eps(x, 100)
    assert model.dtype == torch.bfloat16 and next(model.module.parameters()).dtype == torch.bfloat16
    assert eps.dtype == torch.float32 and eps.shape == x.shape


def test_unsupported_channels():
    with pytest.raises(ValueError, match="extra input channels"):
        DiffusersModel(tiny_unet(in_channels=4, out_channels=3), {}, name="odd")


# ---------------------------------------------------------------------------------------------
# load_pretrained: a model folder
# ---------------------------------------------------------------------------------------------

def save_model_folder(path, prediction_type="epsilon"):
    unet = tiny_unet()
    unet.save_pretrained(path)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, prediction_type=prediction_type)
    scheduler.save_pretrained(path)        # scheduler_config.json beside config.json
    return unet.eval(), scheduler


def test_load_model_folder(tmp_path):
    unet, scheduler = save_model_folder(tmp_path)
    model = load_model(str(tmp_path))      # through the --model dispatch
    assert isinstance(model, DiffusersModel)
    assert model.sample_shape == (3, 8, 8) and model.num_classes is None
    assert model.prediction_type == "epsilon"
    np.testing.assert_allclose(model.schedule.alphas_cumprod, scheduler.alphas_cumprod.numpy(), rtol=1e-5)
    assert model.schedule.clip_sample is False

    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        expected = unet(x, t).sample
    torch.testing.assert_close(model.eps(x, t), expected)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_prediction_type_conversion(tmp_path, prediction_type):
    unet, scheduler = save_model_folder(tmp_path, prediction_type)
    model = load_pretrained(str(tmp_path))
    assert model.prediction_type == prediction_type

    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        out = unet(x, t).sample
    a = scheduler.alphas_cumprod[t].reshape(2, 1, 1, 1)    # diffusers' own ᾱ
    if prediction_type == "v_prediction":
        expected = a.sqrt() * out + (1 - a).sqrt() * x
    else:
        expected = (x - a.sqrt() * out) / (1 - a).sqrt()
    torch.testing.assert_close(model.eps(x, t), expected, rtol=1e-4, atol=1e-5)


def test_dit_folder_without_scheduler(tmp_path):
    dit = tiny_dit()
    dit.save_pretrained(tmp_path)
    # As facebook/DiT-XL-2-256 stores it: the class name from before DiTTransformer2DModel.
    config = json.loads((tmp_path / "config.json").read_text())
    config["_class_name"] = "Transformer2DModel"
    (tmp_path / "config.json").write_text(json.dumps(config))

    with pytest.warns(UserWarning, match="no scheduler config"):
        model = load_pretrained(str(tmp_path))
    assert isinstance(model.module, DiTTransformer2DModel)
    assert model.num_classes == 1000 and model.sample_shape == (4, 8, 8)
    np.testing.assert_allclose(model.schedule.betas, np.linspace(1e-4, 0.02, 1000))
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        expected = dit.eval()(x, timestep=torch.tensor([5, 5]), class_labels=torch.tensor([3, 1000])).sample
    torch.testing.assert_close(model.eps(x, 5, torch.tensor([3, -1])), expected[:, :4])


# ---------------------------------------------------------------------------------------------
# load_pretrained: a pipeline folder
# ---------------------------------------------------------------------------------------------

def tiny_vae(kind):
    torch.manual_seed(0)
    common = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  layers_per_block=1, norm_num_groups=4, sample_size=16)
    if kind == "vae":
        return AutoencoderKL(scaling_factor=0.5, **common)
    return VQModel(num_vq_embeddings=16, scaling_factor=1.0, **common)


@pytest.mark.parametrize("vae_key", ["vae", "vqvae"])
def test_load_latent_pipeline(tmp_path, vae_key):
    unet = tiny_unet(in_channels=4, out_channels=4)
    unet.save_pretrained(tmp_path / "unet")
    DDIMScheduler(clip_sample=False).save_pretrained(tmp_path / "scheduler")
    vae = tiny_vae(vae_key).eval()
    vae.save_pretrained(tmp_path / vae_key)
    index = {"_class_name": "LatentPipeline", "unet": ["diffusers", "UNet2DModel"],
             "scheduler": ["diffusers", "DDIMScheduler"], vae_key: ["diffusers", type(vae).__name__]}
    (tmp_path / "model_index.json").write_text(json.dumps(index))

    model = load_pretrained(str(tmp_path))
    assert model.sample_shape == (4, 8, 8)             # the latent, not the image
    np.testing.assert_allclose(model.schedule.betas, np.linspace(1e-4, 0.02, 1000))
    z = torch.randn(2, 4, 8, 8)
    assert model.eps(z, 50).shape == z.shape

    images = model.decode(z)
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    with torch.no_grad():
        expected = vae.decode(z / vae.config.scaling_factor).sample.clamp(-1, 1)
    torch.testing.assert_close(images, expected)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

def test_text_conditional_pipeline_is_refused(tmp_path):
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "scheduler": ["diffusers", "PNDMScheduler"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="text encoder") as info:
        load_pretrained(str(tmp_path))
    assert "arch:sd2-unet" in str(info.value)


def test_unsupported_model_class(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet3DConditionModel"}))
    with pytest.raises(ValueError, match="UNet3DConditionModel"):
        load_pretrained(str(tmp_path))


def test_uncached_hub_id_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub.hf_constants, "HF_HUB_CACHE", str(tmp_path))   # an empty cache
    with pytest.raises(ValueError, match="nonexistent-org/nonexistent-model") as info:
        load_model("nonexistent-org/nonexistent-model")
    assert "offline" in str(info.value)


@pytest.mark.filterwarnings("ignore:.*local_dir_use_symlinks")   # diffusers' own call into huggingface_hub
def test_cached_hub_id_offline(tmp_path, monkeypatch):
    # A hub cache laid out as huggingface_hub writes it: refs/main names the snapshot.
    repo = tmp_path / "models--tiny-org--tiny-ddpm"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    unet, _ = save_model_folder(repo / "snapshots" / ("0" * 40))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub.hf_constants, "HF_HUB_CACHE", str(tmp_path))

    model = load_model("tiny-org/tiny-ddpm")
    assert model.name == "tiny-org/tiny-ddpm" and model.sample_shape == (3, 8, 8)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        expected = unet(x, torch.tensor([7])).sample
    torch.testing.assert_close(model.eps(x, 7), expected)
