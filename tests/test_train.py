"""pardiff train: a tiny CPU run gives a folder --model loads; the flags' errors; the shipped lfw-32."""
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import pardiff
from pardiff.models import load_model, model_names, trained_path
from pardiff.config import ConfigError
from pardiff.train import TrainConfig, train

TINY = dict(data="lfw", size=16, channels="16,32", steps=12, batch=8, lr=2e-3, warmup=2, device="cpu",
            save_dtype="float32")


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


@pytest.mark.parametrize("change, flag", [
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
