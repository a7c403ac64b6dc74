"""Schedules and the DDPM step against diffusers' own schedulers."""
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from pardiff import seeds
from pardiff.models import load_model
from pardiff.schedules import Schedule, default_schedule, make_betas, timesteps
from pardiff.solvers import ddpm


def test_se2p_appendix_c_jump_sampling():
    assert timesteps(10) == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    assert timesteps(20) == [951, 901, 851, 801, 751, 701, 651, 601, 551, 501,
                             451, 401, 351, 301, 251, 201, 151, 101, 51, 1]
    assert default_schedule().timesteps(10)[0] == 901


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_betas_match_diffusers(schedule):
    kw = dict(beta_start=0.00085, beta_end=0.012) if schedule == "scaled_linear" else {}
    ours = make_betas(schedule, **kw) if kw else make_betas(schedule)
    theirs = DDPMScheduler(beta_schedule=schedule, **kw).betas.numpy()
    assert np.allclose(ours, theirs, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("N", [1, 7, 10, 25, 50, 1000])
def test_spacings_match_diffusers(spacing, N):
    # SE2P's offset 1 on a leading grid, except where it would pass t = 999 (N = 1000: offset 0).
    offset = 1 if spacing == "leading" and N <= 500 else 0
    s = DDPMScheduler(timestep_spacing=spacing, steps_offset=offset)
    s.set_timesteps(N)
    assert timesteps(N, spacing=spacing, offset=1 if spacing == "leading" else 0) == s.timesteps.tolist()


def test_bad_step_counts():
    with pytest.raises(ValueError):
        timesteps(0)
    with pytest.raises(ValueError):
        timesteps(1001)


def test_schedule_from_config_and_alpha_bar():
    s = Schedule.from_config({"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                              "num_train_timesteps": 1000, "clip_sample": True})
    assert s.T == 1000 and s.clip_sample
    assert s.alpha_bar(-1) == 1.0 and s.alpha_bar(0) == pytest.approx(1 - 1e-4)
    assert s.alpha_bar(999) == pytest.approx(np.prod(1 - np.linspace(1e-4, 0.02, 1000)))
    t = torch.tensor([-5, 0, 999])
    assert torch.allclose(s.alpha_bar_tensor(t), torch.tensor([1.0, s.alpha_bar(0), s.alpha_bar(999)],
                                                              dtype=torch.float64))


@pytest.mark.parametrize("clip", [False, True])
def test_ddpm_jump_sampling_matches_diffusers_scheduler(clip):
    """Our sequential DDPM chain equals diffusers' DDPMScheduler.step with the same noise draws."""
    model = load_model("gmm:3x8x8")
    sched = Schedule(betas=model.schedule.betas, clip_sample=clip)
    ref = DDPMScheduler(clip_sample=clip, steps_offset=1, variance_type="fixed_small")
    ref.set_timesteps(10)
    shape = (2, 3, 8, 8)
    x = y = seeds.gaussian(shape, 11)
    ts = sched.timesteps(10)
    for i, t in enumerate(ts):
        z_seed = seeds.seed_for(0, seeds.STEP, i)
        x = ddpm.step(sched, x, model.eps(x, t), t, ts[i + 1] if i + 1 < len(ts) else -1, seeds.gaussian(shape, z_seed))
        g = torch.Generator().manual_seed(z_seed)
        y = ref.step(model.eps(y, t), t, y, generator=g).prev_sample
    assert torch.allclose(x, y, atol=1e-5)
