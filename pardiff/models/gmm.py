"""The exact ε-predictor of a Gaussian-mixture data distribution (docs/models.md).

Data: x_0 ~ Σ_c π_c N(μ_c, σ_c² I) in D = C·H·W dimensions. The DDPM forward
process x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε keeps it a mixture:
    p_t(x) = Σ_c π_c N(x; √ᾱ_t μ_c, s_c² I),   s_c² = ᾱ_t σ_c² + 1 - ᾱ_t,
and the MMSE noise prediction is E[ε | x_t] = -√(1-ᾱ_t) ∇ log p_t(x_t):
    ε(x, t) = √(1-ᾱ_t) Σ_c w_c(x) (x - √ᾱ_t μ_c) / s_c²,
with w_c(x) ∝ π_c N(x; √ᾱ_t μ_c, s_c² I) the posterior of component c. Given the
class label c (the component), ε is the single term for c: a class-conditional
model whose labels are the mixture components.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..schedules import Schedule, default_schedule
from .base import EpsModel

DEFAULT_SHAPE = (3, 32, 32)
NUM_COMPONENTS = 8


class GaussianMixture(EpsModel):
    def __init__(self, shape=DEFAULT_SHAPE, num_components: int = NUM_COMPONENTS,
                 schedule: Schedule | None = None, device="cpu", seed: int = 0):
        C, H, W = shape
        K = num_components
        self.name = "gmm" if tuple(shape) == DEFAULT_SHAPE else f"gmm:{C}x{H}x{W}"
        self.sample_shape = (C, H, W)
        self.schedule = schedule or default_schedule()
        self.num_classes = K
        self.device = torch.device(device)
        self.dtype = torch.float64
        # Component means: smooth random images (a 4x4 pattern per channel, upsampled)
        # in [-0.8, 0.8], so samples look like images and stay inside [-1, 1].
        g = torch.Generator().manual_seed(seed)
        coarse = torch.rand(K, C, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
        means = F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=True) * 0.8
        self.means = means.reshape(K, -1).to(self.device)                          # (K, D)
        self.stds = torch.linspace(0.05, 0.2, K, dtype=torch.float64, device=self.device)
        self.weights = torch.softmax(torch.linspace(-1, 1, K, dtype=torch.float64), 0).to(self.device)
        self._mean_sq = (self.means ** 2).sum(1)                                   # (K,)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _component_logits(self, x: torch.Tensor, a: torch.Tensor):
        """log π_c N(x; √a μ_c, s_c² I) up to a constant, and s_c²; x (B, D), a (B,)."""
        s2 = a[:, None] * self.stds[None, :] ** 2 + (1 - a)[:, None]                # (B, K)
        d2 = ((x ** 2).sum(1, keepdim=True) - 2 * a.sqrt()[:, None] * (x @ self.means.T)
              + a[:, None] * self._mean_sq[None, :])                                 # ||x - √a μ_c||²
        logits = self.weights.log()[None, :] - 0.5 * self.dim * s2.log() - 0.5 * d2 / s2
        return logits, s2

    def eps(self, x, t, class_labels=None):
        B = x.shape[0]
        a = self.schedule.alpha_bar_tensor(self.timestep_tensor(t, B))
        x64 = x.reshape(B, -1).to(torch.float64)
        logits, s2 = self._component_logits(x64, a)
        if class_labels is not None:
            labels = torch.as_tensor(class_labels, device=self.device).reshape(-1).expand(B)
            onehot = F.one_hot(labels.clamp(min=0), self.num_classes).bool()
            logits = torch.where((labels[:, None] < 0) | onehot, logits, torch.full_like(logits, -math.inf))
        coef = torch.softmax(logits, dim=1) / s2                                     # w_c / s_c²
        eps = (1 - a).sqrt()[:, None] * (coef.sum(1, keepdim=True) * x64 - a.sqrt()[:, None] * (coef @ self.means))
        return eps.reshape(x.shape).to(x.dtype)

    def log_prob(self, x0: torch.Tensor) -> torch.Tensor:
        """Exact log-density of samples under the data distribution, per sample (nats)."""
        B = x0.shape[0]
        x64 = x0.reshape(B, -1).to(torch.float64).to(self.device)
        logits, s2 = self._component_logits(x64, torch.ones(B, dtype=torch.float64, device=self.device))
        return torch.logsumexp(logits, 1) - 0.5 * self.dim * math.log(2 * math.pi)

    def sample(self, n: int, generator: torch.Generator | None = None, class_labels=None) -> torch.Tensor:
        """Exact samples of the data distribution (float32)."""
        if class_labels is None:
            comp = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=generator)
        else:
            comp = torch.as_tensor(class_labels).reshape(-1).expand(n).cpu()
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x0 = self.means.cpu()[comp] + self.stds.cpu()[comp, None] * noise
        return x0.reshape(n, *self.sample_shape).float()
