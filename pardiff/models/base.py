"""The one ε-predictor call every algorithm uses."""
from __future__ import annotations

import torch

from ..schedules import Schedule


class EpsModel:
    """A noise predictor ε_θ(x_t, t) with the DDPM schedule it was trained with.

    ``eps(x, t, class_labels)`` takes latents ``x`` of shape ``(B, *sample_shape)``
    in float32, timesteps ``t`` as an int or a ``(B,)`` integer tensor (one per
    sample), and for class-conditional models a ``(B,)`` integer tensor of labels
    (``-1`` = unconditional); it returns ε of x's shape and dtype.
    """

    name: str = ""
    sample_shape: tuple[int, ...] = ()
    schedule: Schedule
    num_classes: int | None = None      # labels 0 .. num_classes-1 when class-conditional
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32  # the dtype the network computes in

    def eps(self, x: torch.Tensor, t, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    @property
    def image_channels(self) -> int:
        """Channels of ``decode``'s images (a latent model's VAE may change them)."""
        return self.sample_shape[0]

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1]; pixel-space models return x."""
        return x

    def timestep_tensor(self, t, batch: int) -> torch.Tensor:
        """``t`` as a ``(batch,)`` tensor on the model's device: long for integer timesteps,
        float64 for fractional ones (IIA's fine-grained steps, EDM's σ grid)."""
        t = torch.as_tensor(t)
        dtype = torch.float64 if t.is_floating_point() else torch.long
        # non_blocking: a blocking copy to the GPU would wait for every queued kernel (a host sync per call)
        return t.to(dtype=dtype).to(device=self.device, non_blocking=True).reshape(-1).expand(batch)
