"""pardiff train: a tiny CPU run gives a folder --model loads (pixel space, and latent with an autoencoder);
the flags' errors; the shipped lfw-32, lfw-32-cfg, digits-32-cfg, lfw-ldm, digits-ldm, photos-32-cfg and photos-ldm;
the photos data set."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import pardiff
from pardiff.models import load_model, model_names, trained_path
from pardiff.config import ConfigError
from pardiff.train import TrainConfig, train

TINY = dict(data="lfw", size=16, channels="16,32", steps=12, batch=8, lr=2e-3, warmup=2, device="cpu",
            save_dtype="float32")
TINY_LATENT = dict(TINY, vae_channels="8,16", latent_channels=2, vae_steps=8)   # 16x16 images, 2x8x8 latents


def test_train_tiny_loads_and_is_deterministic(tmp_path):
    pytest.importorskip("skimage")
    log = train(TrainConfig(out=str(tmp_path / "a"), log=str(tmp_path / "a.json"), **TINY))
    losses = [loss for _, loss in log["loss_curve"]]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert json.loads((tmp_path / "a.json").read_text())["final_loss"] == log["final_loss"]

    model = load_model(str(tmp_path / "a"))
    assert model.sample_shape == (1, 16, 16)
    assert model.schedule.T == 1000 and model.schedule.clip == 1.0
    torch.testing.assert_close(torch.as_tensor(model.schedule.betas), torch.linspace(1e-4, 0.02, 1000,
                               dtype=torch.float64))
    eps = model.eps(torch.zeros(2, 1, 16, 16), 500)
    assert eps.shape == (2, 1, 16, 16) and torch.isfinite(eps).all()

    # the same seed, the same weights, bit for bit (on the CPU)
    train(TrainConfig(out=str(tmp_path / "b"), **TINY))
    again = load_model(str(tmp_path / "b"))
    for p, q in zip(model.module.parameters(), again.module.parameters()):
        assert torch.equal(p, q)


def test_train_tiny_class_conditional(tmp_path):
    """--classes: a UNet with one embedding per label and a marked null class, which pardiff loads as
    class-conditional (labels as the data's, 0 non-face / 1 face, -1 the null class) and samples with guidance."""
    pytest.importorskip("skimage")
    log = train(TrainConfig(out=str(tmp_path / "c"), classes=True, **TINY))
    assert log["classes"] == 2 and log["unet"]["num_class_embeds"] == 3 and log["config"]["class_drop"] == 0.1
    assert json.loads((tmp_path / "c" / "config.json").read_text())["_pardiff_null_class"] == 2

    model = load_model(str(tmp_path / "c"))
    assert model.num_classes == 2
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    face, other, null = (model.eps(x, 500, torch.tensor(c)) for c in (1, 0, -1))
    assert not torch.equal(face, other) and not torch.equal(face, null)
    torch.testing.assert_close(model.eps(x, 500), null)            # no label: the null class
    torch.testing.assert_close(model.eps(x, 500, torch.tensor([1, 0, -1])),
                               torch.cat([face[:1], other[1:2], null[2:]]))

    # the CLI: guided samples for class 1, and the class range checked against the model
    out = tmp_path / "s.npy"
    pardiff(1, "run", "sequential", "--model", str(tmp_path / "c"), "--sampler", "ddim", "--steps", "3",
            "--class-label", "1", "--guidance", "2", "--batch", "2", "--out", str(out), cwd=tmp_path)
    assert np.load(out).shape == (2, 1, 16, 16)
    r = pardiff(1, "run", "sequential", "--model", str(tmp_path / "c"), "--steps", "3", "--class-label", "2",
                cwd=tmp_path, check=False)
    assert r.returncode != 0 and "--class-label" in r.stderr and "classes 0..1" in r.stderr


def test_train_tiny_on_ten_digit_classes(tmp_path):
    """--data digits --classes: ten classes and the null class 10; --class-label is checked against them;
    --clip-sample off saves a scheduler without the clamp."""
    pytest.importorskip("sklearn")
    log = train(TrainConfig(out=str(tmp_path / "d"), classes=True, clip_sample="off", **dict(TINY, data="digits")))
    assert log["classes"] == 10 and log["unet"]["num_class_embeds"] == 11 and log["images"] == 1797
    model = load_model(str(tmp_path / "d"))
    assert model.num_classes == 10 and model.schedule.clip is None       # --clip-sample off: no x̂0 clamp
    out = tmp_path / "s.npy"
    pardiff(1, "run", "sequential", "--model", str(tmp_path / "d"), "--sampler", "ddim", "--steps", "3",
            "--class-label", "9", "--guidance", "3", "--batch", "2", "--out", str(out), cwd=tmp_path)
    assert np.load(out).shape == (2, 1, 16, 16)
    r = pardiff(1, "run", "sequential", "--model", str(tmp_path / "d"), "--steps", "3", "--class-label", "10",
                cwd=tmp_path, check=False)
    assert r.returncode != 0 and "classes 0..9" in r.stderr


def test_digits_are_not_mirrored(tmp_path, monkeypatch):
    """A mirrored digit is no digit: training on digits draws the flips (the stream stays the data
    sets' common one) but applies none: with mirroring switched on the same seed trains other weights."""
    pytest.importorskip("sklearn")
    import pardiff.train
    from pardiff.data import MIRRORED
    assert MIRRORED == {"lfw": True, "lfw-faces": True, "digits": False, "photos": True}
    cfg = dict(TINY, data="digits", steps=3)
    train(TrainConfig(out=str(tmp_path / "plain"), **cfg))
    monkeypatch.setitem(pardiff.train.MIRRORED, "digits", True)
    train(TrainConfig(out=str(tmp_path / "mirrored"), **cfg))
    a, b = load_model(str(tmp_path / "plain")), load_model(str(tmp_path / "mirrored"))
    assert any(not torch.equal(p, q) for p, q in zip(a.module.parameters(), b.module.parameters()))


def test_class_conditional_unet_without_null_class_refused(tmp_path):
    """A class-conditional UNet2DModel from elsewhere has no known unconditional class: refused by name."""
    from diffusers import UNet2DModel
    from pardiff.train import scheduler, unet_config
    UNet2DModel(**unet_config(16, [16, 32], classes=2)).save_pretrained(tmp_path / "m")
    scheduler().save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="without a marked null class"):
        load_model(str(tmp_path / "m"))


def test_train_tiny_latent_model(tmp_path):
    """--vae-channels: an autoencoder, then the UNet on its scaled latents; a pipeline folder that pardiff
    and diffusers' LDMPipeline load, whose samples pardiff eval --decode turns into images."""
    pytest.importorskip("skimage")
    log = train(TrainConfig(out=str(tmp_path / "a"), **TINY_LATENT))
    vae_losses = [loss for _, loss in log["vae"]["loss_curve"]]
    assert all(math.isfinite(v) for v in vae_losses) and vae_losses[-1] < vae_losses[0]
    assert log["unet"]["in_channels"] == 2 and log["unet"]["sample_size"] == 8
    index = json.loads((tmp_path / "a" / "model_index.json").read_text())
    assert index["_class_name"] == "LDMPipeline" and index["vqvae"] == ["diffusers", "AutoencoderKL"]

    model = load_model(str(tmp_path / "a"))
    assert model.sample_shape == (2, 8, 8) and model.image_channels == 1
    assert model.schedule.clip is None                     # latents are not clipped to [-1, 1]
    scale = model.vae.config.scaling_factor
    assert scale == pytest.approx(log["vae"]["scaling_factor"]) and scale > 0
    z = torch.randn(3, 2, 8, 8)
    images = model.decode(z)
    assert images.shape == (3, 1, 16, 16) and images.abs().max() <= 1
    with torch.no_grad():                                   # decode divides by the scaling factor first
        direct = model.vae.decode(z / scale).sample.clamp(-1, 1)
    torch.testing.assert_close(images, direct)

    # the same seed, the same autoencoder and UNet, bit for bit (on the CPU)
    train(TrainConfig(out=str(tmp_path / "b"), **TINY_LATENT))
    again = load_model(str(tmp_path / "b"))
    for p, q in zip([*model.module.parameters(), *model.vae.parameters()],
                    [*again.module.parameters(), *again.vae.parameters()]):
        assert torch.equal(p, q)

    from diffusers import LDMPipeline
    images = LDMPipeline.from_pretrained(str(tmp_path / "a"))(batch_size=1, num_inference_steps=2,
                                                              output_type="np").images
    assert images.shape == (1, 16, 16, 1)

    # pardiff run --out FILE.npy writes latents; pardiff eval --decode measures their images
    pardiff(None, "run", "sequential", "--model", str(tmp_path / "a"), "--steps", "3", "--batch", "4",
            "--out", "z.npy", cwd=tmp_path)
    r = pardiff(None, "eval", "z.npy", "--decode", str(tmp_path / "a"), "--report", "e.json", cwd=tmp_path)
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["files"]["z.npy"]["shape"] == [1, 16, 16] and report["files"]["z.npy"]["n"] == 4
    assert report["decoded_with"] == str(tmp_path / "a")
    r = pardiff(None, "eval", "z.npy", cwd=tmp_path, check=False)
    assert r.returncode == 2 and "add --decode MODEL" in r.stderr
    r = pardiff(None, "eval", "z.npy", "--decode", "gmm", cwd=tmp_path, check=False)
    assert r.returncode == 2 and "pardiff: error: --decode:" in r.stderr and "pixel-space" in r.stderr


@pytest.mark.parametrize("change, flag", [
    (dict(TINY_LATENT, vae_channels="8,x"), "--vae-channels"),
    (dict(TINY_LATENT, vae_channels="12,24"), "--vae-channels"),
    (dict(TINY_LATENT, vae_channels="8,16,16,16"), "--vae-channels"),     # latents of 2x2: too small for the UNet
    (dict(TINY_LATENT, size=18, vae_channels="8,16,16"), "--size"),
    (dict(TINY_LATENT, vae_steps=0), "--vae-steps"),
    (dict(TINY_LATENT, latent_channels=0), "--latent-channels"),
    (dict(TINY_LATENT, kl_weight=-1.0), "--kl-weight"),
    (dict(data="mnist"), "--data"),
    (dict(size=15), "--size"),
    (dict(size=4), "--size"),
    (dict(channels="16,x"), "--channels"),
    (dict(channels="12,24"), "--channels"),
    (dict(steps=0), "--steps"),
    (dict(batch=0), "--batch"),
    (dict(lr=0.0), "--lr"),
    (dict(ema=1.0), "--ema"),
    (dict(save_dtype="int8"), "--save-dtype"),
    (dict(class_drop=0.2), "--class-drop"),
    (dict(classes=True, class_drop=1.0), "--class-drop"),
    (dict(classes=True, class_drop=0.0), "--class-drop"),
    (dict(classes=True, data="lfw-faces"), "--classes"),
    (dict(clip_sample="yes"), "--clip-sample"),
    (dict(TINY_LATENT, clip_sample="on"), "--clip-sample"),
    (dict(device="tpu"), "--device"),
    (dict(log="no/such/folder/log.json"), "--log"),
    (dict(log="log.txt"), "--log"),
    (dict(out="no/such/folder/m"), "--out"),
])
def test_train_validation_names_the_flag(tmp_path, change, flag):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**{"out": str(tmp_path / "m"), **TINY, **change}).validate()
    assert e.value.flag == flag and str(e.value).startswith(flag)


def test_train_cli_error(tmp_path):
    r = pardiff(None, "train", "--out", "m", "--size", "30", cwd=tmp_path, check=False)
    assert r.returncode == 2 and "pardiff: error: --size:" in r.stderr and "Traceback" not in r.stderr


def test_shipped_lfw_32():
    assert "lfw-32" in model_names()
    model = load_model("lfw-32")
    assert model.name == "lfw-32" and model.sample_shape == (1, 32, 32)
    assert sum(p.numel() for p in model.module.parameters()) == 6469889
    assert model.module.dtype == torch.float32                      # stored in float16, run in float32
    config = json.loads((Path(trained_path("lfw-32")) / "scheduler_config.json").read_text())
    assert config["beta_schedule"] == "linear" and config["num_train_timesteps"] == 1000


def test_shipped_lfw_32_cfg():
    """The class-conditional model: labels 0 / 1, the null class behind -1, and guidance that moves ε."""
    assert "lfw-32-cfg" in model_names()
    model = load_model("lfw-32-cfg")
    assert model.sample_shape == (1, 32, 32) and model.num_classes == 2
    assert sum(p.numel() for p in model.module.parameters()) == 6470657      # lfw-32 + 3 class embeddings
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    face, other, null = (model.eps(x, 600, torch.tensor(c)) for c in (1, 0, -1))
    assert (face - null).abs().mean() > 1e-3 and (face - other).abs().mean() > 1e-3


def test_shipped_digits_32_cfg():
    """The ten-digit model: labels 0..9, the null class behind -1, and guidance that moves ε."""
    assert "digits-32-cfg" in model_names()
    model = load_model("digits-32-cfg")
    assert model.sample_shape == (1, 32, 32) and model.num_classes == 10
    assert sum(p.numel() for p in model.module.parameters()) == 6472705      # lfw-32 + 11 class embeddings of 256
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    three, seven, null = (model.eps(x, 600, torch.tensor(c)) for c in (3, 7, -1))
    assert (three - null).abs().mean() > 1e-3 and (three - seven).abs().mean() > 1e-3


def test_photos_data_set():
    """Ten photographs, 512 crops each, labelled by photo; the crops' geometry is fixed, so a crop made
    at 16x16 is the 32x32 crop of the same window, at another resolution."""
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    from pardiff.data import CHANNELS, PHOTOS, load_dataset
    assert CHANNELS["photos"] == 3 and len(PHOTOS) == 10
    x32, labels = load_dataset("photos", 32)
    assert x32.shape == (5120, 3, 32, 32) and x32.dtype == torch.float32
    assert x32.min() >= -1 and x32.max() <= 1
    assert torch.equal(labels, torch.arange(10).repeat_interleave(512))
    x16, _ = load_dataset("photos", 16)
    down = torch.nn.functional.avg_pool2d(x32, 2)
    assert ((down - x16) ** 2).mean().sqrt() < 0.05                    # the same windows
    assert ((down - x16.roll(1, 0)) ** 2).mean().sqrt() > 0.2          # and not any crop
    # colour: the retina photo is red, the Hubble deep field mostly black
    retina, hubble = x32[labels == 6], x32[labels == 3]
    assert (retina[:, 0] - retina[:, 1]).mean() > 0.5 and hubble.mean() < -0.7
    again, _ = load_dataset("photos", 32)
    assert torch.equal(again, x32)


def test_train_tiny_colour_models(tmp_path):
    """--data photos: an RGB UNet with ten classes; with --vae-channels an RGB autoencoder whose latents
    decode to RGB images."""
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    log = train(TrainConfig(out=str(tmp_path / "p"), **dict(TINY, data="photos", classes=True, steps=3)))
    assert log["unet"]["in_channels"] == log["unet"]["out_channels"] == 3 and log["classes"] == 10
    model = load_model(str(tmp_path / "p"))
    assert model.sample_shape == (3, 16, 16) and model.num_classes == 10
    log = train(TrainConfig(out=str(tmp_path / "l"), **dict(TINY_LATENT, data="photos", steps=3, vae_steps=3)))
    assert log["vae"]["config"]["in_channels"] == log["vae"]["config"]["out_channels"] == 3
    model = load_model(str(tmp_path / "l"))
    assert model.sample_shape == (2, 8, 8) and model.image_channels == 3
    assert model.decode(torch.randn(2, 2, 8, 8)).shape == (2, 3, 16, 16)


def test_shipped_photos_32_cfg(tmp_path):
    """The colour model: RGB, labels 0..9 (the photographs), and guidance that lands on a photo's
    colours: samples guided to the retina (6) come out red, to the Hubble deep field (3) dark."""
    assert "photos-32-cfg" in model_names()
    model = load_model("photos-32-cfg")
    assert model.sample_shape == (3, 32, 32) and model.num_classes == 10
    assert sum(p.numel() for p in model.module.parameters()) == 6475011      # digits-32-cfg + RGB in and out
    out = {}
    for label in (3, 6):
        pardiff(1, "run", "sequential", "--model", "photos-32-cfg", "--sampler", "ddim", "--steps", "10",
                "--class-label", label, "--guidance", "2", "--batch", "6", "--out", f"{label}.npy", cwd=tmp_path)
        out[label] = np.load(tmp_path / f"{label}.npy")
    assert (out[6][:, 0] - out[6][:, 1]).mean() > 0.3 and out[3].mean() < -0.5


# name, data set, image channels, autoencoder parameters, bound on the reconstruction RMS of 64 training
# images (trained to 0.0167 on lfw, 0.0037 on the digits, 0.074 on the photo crops: 256 numbers per
# 3072-value colour crop keep its colours and coarse shapes, not its finest texture)
LATENT_MODELS = [("lfw-ldm", "lfw", 1, 953413, 0.05), ("digits-ldm", "digits", 1, 953413, 0.05),
                 ("photos-ldm", "photos", 3, 954567, 0.12)]


@pytest.mark.parametrize("name, data, channels, vae_parameters, rms", LATENT_MODELS)
def test_shipped_latent_models(name, data, channels, vae_parameters, rms):
    """The latent models: one architecture, each with its own autoencoder, which draws its training
    images back from their latents (what --decode relies on)."""
    if data == "photos":
        pytest.importorskip("skimage")
        pytest.importorskip("sklearn")
    assert name in model_names()
    model = load_model(name)
    assert model.name == name and model.sample_shape == (4, 8, 8) and model.image_channels == channels
    assert sum(p.numel() for p in model.module.parameters()) == 3993476
    assert sum(p.numel() for p in model.vae.parameters()) == vae_parameters
    assert model.schedule.T == 1000 and model.schedule.clip is None
    from pardiff.data import load_dataset
    images, _ = load_dataset(data, 32)
    images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:64]]
    with torch.no_grad():      # encoded to the UNet's scaled latents, decoded by the path every sample takes
        z = model.vae.encode(images).latent_dist.mean * model.vae.config.scaling_factor
    assert abs(z.std().item() - 1) < 0.3                                   # the scaling_factor's unit variance
    back = model.decode(z)
    assert back.shape == (64, channels, 32, 32)
    assert ((back.float() - images) ** 2).mean().sqrt() < rms
