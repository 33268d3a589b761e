"""Samplers: short flat functions with one signature (see interfaces.Sampler)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from ..hookspecs import hookimpl
from ..interfaces import Model, Sampler
from ..noise import NoiseSource, randn_like


@torch.no_grad()
def sample_ancestral(diffusion, model: Model, x_T: torch.Tensor, *, generator: torch.Generator | None = None,
                     callback: Callable[[dict[str, Any]], None] | None = None, noise: NoiseSource | None = None,
                     clip_denoised: bool = True) -> torch.Tensor:
    """Algorithm 2: x_{t-1} = mu_theta(x_t, t) + sigma_t z, with no noise at the last step."""
    x = x_T
    for i in reversed(range(diffusion.num_timesteps)):
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        p = diffusion.p_mean_variance(model, x, t, clip_denoised=clip_denoised)
        x = p.mean
        if i > 0:
            x = x + torch.exp(0.5 * p.log_variance) * randn_like(x, generator, noise)
        if callback is not None:
            callback({"i": i, "x": x, "x0_hat": p.pred_x0})
    return x


def ancestral(clip_denoised: bool = True) -> Sampler:
    """Factory for the ancestral sampler; ``clip_denoised`` clips x0-hat to [-1, 1] at each step."""
    return partial(sample_ancestral, clip_denoised=clip_denoised)


@hookimpl
def register_samplers(register):
    register("ancestral", ancestral)
