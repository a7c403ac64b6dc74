"""Schedules and the DDPM step against diffusers' own schedulers."""
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from pardiff import seeds
from pardiff.models import load_model
from pardiff.schedules import Schedule, default_schedule, make_betas, timesteps
from pardiff.solvers import make_solver


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


def run_ours(name, model, sched, steps, shape, seed=11):
    solver = make_solver(name, sched, steps)
    x = seeds.gaussian(shape, seed)
    history = None
    for j, t in enumerate(solver.timesteps):
        z = seeds.gaussian(shape, seeds.seed_for(0, seeds.STEP, steps - 1 - j)) if solver.stochastic else None
        x, history = solver.step(x, model.eps(x, t), j, history, noise=z)
    return solver, x


def run_diffusers(scheduler, model, steps, shape, seed=11, stochastic=False):
    scheduler.set_timesteps(steps)
    y = seeds.gaussian(shape, seed)
    for j, t in enumerate(scheduler.timesteps):
        kw = {"generator": torch.Generator().manual_seed(seeds.seed_for(0, seeds.STEP, steps - 1 - j))} \
            if stochastic else {}
        y = scheduler.step(model.eps(y, int(t)), t, y, **kw).prev_sample
    return scheduler.timesteps.tolist(), y


@pytest.mark.parametrize("clip", [False, True])
def test_ddpm_matches_diffusers_scheduler(clip):
    """Our DDPM chain equals diffusers' DDPMScheduler.step with the same noise draws."""
    model = load_model("gmm:3x8x8")
    sched = Schedule(betas=model.schedule.betas, clip_sample=clip)
    solver, x = run_ours("ddpm", model, sched, 10, (2, 3, 8, 8))
    ts, y = run_diffusers(DDPMScheduler(clip_sample=clip, steps_offset=1), model, 10, (2, 3, 8, 8),
                          stochastic=True)
    assert solver.timesteps == ts
    assert torch.allclose(x, y, atol=1e-5)


@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_matches_diffusers_scheduler(steps, clip):
    model = load_model("gmm:3x8x8")
    sched = Schedule(betas=model.schedule.betas, clip_sample=clip)
    solver, x = run_ours("ddim", model, sched, steps, (2, 3, 8, 8))
    ts, y = run_diffusers(DDIMScheduler(clip_sample=clip, steps_offset=1), model, steps, (2, 3, 8, 8))
    assert solver.timesteps == ts
    assert torch.allclose(x, y, atol=1e-5)


def test_ddim_final_alpha_of_a_model_without_set_alpha_to_one():
    model = load_model("gmm:1x4x4")
    sched = Schedule(betas=model.schedule.betas, set_alpha_to_one=False)
    solver, x = run_ours("ddim", model, sched, 10, (1, 1, 4, 4))
    _, y = run_diffusers(DDIMScheduler(set_alpha_to_one=False, steps_offset=1), model, 10, (1, 1, 4, 4))
    assert torch.allclose(x, y, atol=1e-5)


@pytest.mark.parametrize("steps", [5, 10, 25, 50])
def test_dpmsolver_matches_diffusers_multistep_scheduler(steps):
    """DPM-Solver++ 2M with diffusers' defaults (midpoint, lower-order final, σ_final = 0, linspace)."""
    model = load_model("gmm:3x8x8")
    solver, x = run_ours("dpmsolver", model, model.schedule, steps, (2, 3, 8, 8))
    ts, y = run_diffusers(DPMSolverMultistepScheduler(), model, steps, (2, 3, 8, 8))
    assert solver.timesteps == ts
    assert torch.allclose(x, y, atol=1e-4, rtol=1e-4), (x - y).abs().max()


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmsolver"])
def test_batched_rows_equal_one_at_a_time(name):
    """Stepping rows at different step indices in one batch gives the bits of stepping each alone."""
    model = load_model("gmm:2x4x4")
    solver = make_solver(name, model.schedule, 20)
    x = seeds.gaussian((4, 2, 4, 4), 3)
    j = torch.tensor([0, 5, 11, 19])
    eps = torch.cat([model.eps(x[i:i + 1], solver.timesteps[int(j[i])]) for i in range(4)])
    hist = seeds.gaussian((4, solver.history_slots, 2, 4, 4), 4) if solver.history_slots else None
    z = seeds.gaussian((4, 2, 4, 4), 5)
    batch, h = solver.step(x, eps, j, hist, noise=z)
    for i in range(4):
        one, one_h = solver.step(x[i:i + 1], eps[i:i + 1], int(j[i]), hist[i:i + 1] if hist is not None else None,
                                 noise=z[i:i + 1])
        assert torch.equal(batch[i:i + 1], one)
        assert (h is None and one_h is None) or torch.equal(h[i:i + 1], one_h)


@pytest.mark.parametrize("name,columns", [("dpmsolver", 0), ("iia-ddim", 2), ("iia-ddim", 1), ("iia-dpmsolver++", 2)])
def test_a_row_without_history_takes_the_first_order_step(name, columns):
    """A window point the parallel solvers have just made carries no previous step (has_history
    false): its step must be the one a sampler takes without history, whatever the history
    tensor holds, while rows with history take the multistep one (window.solve_subproblems)."""
    from pardiff.solvers import SOLVERS
    schedule = load_model("gmm:3x8x8").schedule
    steps = 10
    rng = np.random.default_rng(0)
    solver = SOLVERS[name](schedule, steps) if columns == 0 else \
        SOLVERS[name](schedule, steps, rng.uniform(0.2, 0.8, (steps, columns)))   # every step size nonzero
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    j = torch.tensor([3, 3, 6, 6])                                  # two points, batch 2, mid-trajectory
    history = torch.randn(4, solver.history_slots, 3, 8, 8, generator=g)
    without, _ = solver.step(x, eps, j)
    none_have, _ = solver.step(x, eps, j, history, torch.tensor([False] * 4))
    assert torch.equal(none_have, without)
    some_have, _ = solver.step(x, eps, j, history, torch.tensor([True, True, False, False]))
    with_all, _ = solver.step(x, eps, j, history, None)             # None: every row has one
    assert torch.equal(some_have[2:], without[2:]) and torch.equal(some_have[:2], with_all[:2])
    assert not torch.allclose(with_all[:2], without[:2])             # the history does change a step
