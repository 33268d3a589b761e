"""Sampling over a subset of the trained timesteps (Nichol & Dhariwal 2021, section 4).

A K-step sampler runs an ordinary sampler on a *respaced* diffusion: the kept timesteps' alpha-bar
define new betas (beta'_k = 1 - abar_{t_k} / abar_{t_{k-1}}), and the network is called with the
original timestep each new index stands for.
"""

from __future__ import annotations

import torch

from .diffusion import GaussianDiffusion
from .interfaces import Model, Schedule


def spaced_timesteps(T: int, steps: int) -> list[int]:
    """``steps`` evenly spaced 0-based indices from 0 to T-1, both ends included."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must lie in 1..{T}, got {steps}")
    return sorted({round(i * (T - 1) / max(steps - 1, 1)) for i in range(steps)})


def respace(d: GaussianDiffusion, steps: int | list[int]) -> tuple[GaussianDiffusion, torch.Tensor]:
    """A diffusion over ``steps`` evenly spaced timesteps (or the given sorted 0-based indices):
    betas from alpha-bar at the kept steps, and the map from its indices to the original ones."""
    keep = spaced_timesteps(d.num_timesteps, steps) if isinstance(steps, int) else sorted(steps)
    ab = d.alphas_cumprod[keep]
    betas = 1 - ab / torch.cat([ab.new_ones(1), ab[:-1]])
    return GaussianDiffusion(Schedule(betas), d.parameterization, d.variance, d.decoder), torch.tensor(keep)


def on_original_timesteps(model: Model, timestep_map: torch.Tensor) -> Model:
    """``model`` called with the original timestep of each respaced index ``t``."""
    def call(x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        return model(x, timestep_map.to(t.device)[t], **kwargs)
    return call
