"""The Gaussian-mixture ε against independent numerical checks."""
import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from pardiff.models import check_model_spec, load_model
from pardiff.models.gmm import GaussianMixture


def marginal(model, t):
    """p_t as a torch.distributions mixture (independent of the model's own formulas)."""
    a = float(model.schedule.alphas_cumprod[t])
    scale = torch.sqrt(a * model.stds ** 2 + 1 - a)[:, None].expand_as(model.means)
    comps = Independent(Normal(math.sqrt(a) * model.means, scale), 1)
    return MixtureSameFamily(Categorical(probs=model.weights), comps), a


@pytest.mark.parametrize("t", [0, 10, 250, 600, 999])
def test_eps_is_minus_scaled_score(t):
    model = GaussianMixture((2, 3, 3))
    dist, a = marginal(model, t)
    x = dist.sample((5,)).requires_grad_(True)
    score, = torch.autograd.grad(dist.log_prob(x).sum(), x)
    expected = -math.sqrt(1 - a) * score
    got = model.eps(x.detach().reshape(5, 2, 3, 3).float(), t).reshape(5, -1).double()
    assert torch.allclose(got, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("t", [100, 400])
def test_eps_is_posterior_mean_of_the_noise_monte_carlo(t):
    """E[ε | x_t] by self-normalised importance sampling over exact data samples."""
    model = GaussianMixture((1, 2, 2))
    a = float(model.schedule.alphas_cumprod[t])
    g = torch.Generator().manual_seed(0)
    x0 = model.sample(400_000, generator=g).reshape(-1, 4).double()
    x_t = model.sample(3, generator=g).reshape(-1, 4).double() * math.sqrt(a) + math.sqrt(1 - a) * torch.randn(
        3, 4, generator=g, dtype=torch.float64)
    got = model.eps(x_t.float().reshape(3, 1, 2, 2), t).reshape(3, 4).double()
    for i in range(3):
        noise = (x_t[i] - math.sqrt(a) * x0) / math.sqrt(1 - a)          # the ε that maps x0_j to x_t
        w = torch.softmax(-0.5 * (noise ** 2).sum(1), 0)
        mc = (w[:, None] * noise).sum(0)
        assert torch.allclose(got[i], mc, atol=0.03), (got[i], mc)


def test_class_conditional_is_the_components_eps():
    model = GaussianMixture((3, 4, 4))
    t = 300
    a = float(model.schedule.alphas_cumprod[t])
    x = torch.randn(4, 3, 4, 4)
    labels = torch.tensor([0, 3, 7, -1])
    got = model.eps(x, t, labels).reshape(4, -1).double()
    for i, c in enumerate(labels[:3].tolist()):
        s2 = a * model.stds[c] ** 2 + 1 - a
        expected = math.sqrt(1 - a) * (x[i].reshape(-1).double() - math.sqrt(a) * model.means[c]) / s2
        assert torch.allclose(got[i], expected, atol=1e-5)
    assert torch.allclose(got[3], model.eps(x[3:], t).reshape(-1).double(), atol=1e-6)   # -1: unconditional


def test_unconditional_is_posterior_mixture_of_conditionals():
    model = GaussianMixture((1, 3, 3))
    t = 500
    dist, _ = marginal(model, t)
    x = torch.randn(2, 9, dtype=torch.float64)
    comp_logp = dist.component_distribution.log_prob(x[:, None, :]) + model.weights.log()
    w = torch.softmax(comp_logp, 1)
    xs = x.float().reshape(2, 1, 3, 3)
    per_class = torch.stack([model.eps(xs, t, torch.full((2,), c)) for c in range(8)], 1).reshape(2, 8, 9)
    mix = (w[:, :, None] * per_class.double()).sum(1)
    assert torch.allclose(model.eps(xs, t).reshape(2, 9).double(), mix, atol=1e-5)


def test_per_sample_timesteps_and_log_prob():
    model = GaussianMixture((1, 2, 2))
    x = torch.randn(3, 1, 2, 2)
    ts = torch.tensor([5, 500, 900])
    batched = model.eps(x, ts)
    for i in range(3):
        assert torch.allclose(batched[i], model.eps(x[i:i + 1], int(ts[i]))[0])
    x0 = model.sample(6, generator=torch.Generator().manual_seed(1))
    dist, _ = marginal(model, 0)
    data = MixtureSameFamily(Categorical(probs=model.weights),
                             Independent(Normal(model.means, model.stds[:, None].expand_as(model.means)), 1))
    assert torch.allclose(model.log_prob(x0), data.log_prob(x0.reshape(6, -1).double()), atol=1e-8)


def test_specs():
    assert load_model("gmm").sample_shape == (3, 32, 32)
    assert load_model("gmm:1x5x7").sample_shape == (1, 5, 7)
    assert load_model("gmm").eps(torch.zeros(2, 3, 32, 32), 10).dtype == torch.float32
    for bad in ("gmm:0x4x4", "gmm:3x4", "nonsense", "arch:unet-9000"):
        with pytest.raises(ValueError):
            check_model_spec(bad)
