"""Sampling over a subset of the trained timesteps (Nichol & Dhariwal 2021, section 4).

A K-step sampler runs an ordinary sampler on a *respaced* diffusion: the kept timesteps' alpha-bar
define new betas (beta'_k = 1 - abar_{t_k} / abar_{t_{k-1}}), and the network is called with the
original timestep each new index stands for.
"""

from __future__ import annotations

import torch

from .diffusion import GaussianDiffusion
from .errors import DdpmKitError
from .interfaces import Model, Parameterization, Schedule


def validate_steps(steps: int, num_timesteps: int | None) -> int:
    """``steps``, if K steps out of a T-step chain can be taken (1 <= K <= T; K >= 1 when T is not
    known yet, as when a factory is called without the engine's ``num_timesteps``)."""
    if steps < 1 or (num_timesteps is not None and steps > num_timesteps):
        most = "T" if num_timesteps is None else f"{num_timesteps} (the schedule's T)"
        raise DdpmKitError(f"steps must lie in 1..{most}, got {steps}")
    return steps


def spaced_timesteps(T: int, steps: int) -> list[int]:
    """``steps`` evenly spaced 0-based indices from 0 to T-1, both ends included."""
    validate_steps(steps, T)
    return sorted({round(i * (T - 1) / max(steps - 1, 1)) for i in range(steps)})


def respace(d: GaussianDiffusion, steps: int | list[int]) -> tuple[GaussianDiffusion, torch.Tensor]:
    """A diffusion over ``steps`` evenly spaced timesteps (or the given sorted 0-based indices):
    betas from alpha-bar at the kept steps, and the map from its indices to the original ones."""
    keep = spaced_timesteps(d.num_timesteps, steps) if isinstance(steps, int) else sorted(steps)
    ab = d.alphas_cumprod[keep]
    betas = 1 - ab / torch.cat([ab.new_ones(1), ab[:-1]])
    timestep_map = torch.tensor(keep)
    param = d.parameterization
    if param.chain_dependent:
        param = OnTrainedChain(param, d, timestep_map)
    return GaussianDiffusion(Schedule(betas), param, d.variance, d.decoder), timestep_map


class OnTrainedChain(Parameterization):
    """A chain-dependent parameterization (mu) read on the chain the network was trained on: the
    output at respaced index k means what it meant at the original timestep ``timestep_map[k]``
    (for mu: the mean of x_{t-1} of the T-step chain), so x0-hat comes from the original chain's
    posterior coefficients and the respaced chain's mean from its own posterior at x0-hat (eq. 7)."""

    def __init__(self, inner: Parameterization, trained: GaussianDiffusion, timestep_map: torch.Tensor) -> None:
        self.inner, self.trained, self.timestep_map = inner, trained, timestep_map
        self.name, self.diffusers_prediction_type = inner.name, inner.diffusers_prediction_type

    def _original(self, t: torch.Tensor) -> torch.Tensor:
        return self.timestep_map.to(t.device)[t]

    def from_x0(self, d, x0, x_t, t):
        return self.inner.from_x0(self.trained, x0, x_t, self._original(t))

    def predict_x0(self, d, output, x_t, t):
        return self.inner.predict_x0(self.trained, output, x_t, self._original(t))


def on_original_timesteps(model: Model, timestep_map: torch.Tensor) -> Model:
    """``model`` called with the original timestep of each respaced index ``t``."""
    def call(x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        return model(x, timestep_map.to(t.device)[t], **kwargs)
    return call
