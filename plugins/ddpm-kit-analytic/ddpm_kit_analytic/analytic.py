"""Analytic-DPM (Bao et al. 2022, Theorem 1 with lambda^2 the DDPM posterior variance): Gamma_n,
the optimal variance on a trajectory, and a respaced diffusion that samples with it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ddpm_kit.api import GaussianDiffusion, Model, VarianceChoice, respace


@torch.no_grad()
def estimate_gamma(d: GaussianDiffusion, model: Model, x0: torch.Tensor, timesteps: Sequence[int], *,
                   batch_size: int = 256, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gamma_t = E ||eps_theta(x_t, t)||^2 / d for each t of ``timesteps`` (0-based), by Monte Carlo
    over the images ``x0`` (one draw of x_t ~ q(x_t | x0) per image and t), and its standard error
    (the per-image values' std / sqrt(N)). eps_theta is the run's parameterization's eps-hat."""
    means, errors = [], []
    for t in timesteps:
        per_image = []
        for batch in x0.split(batch_size):
            tt = torch.full((len(batch),), int(t), dtype=torch.long, device=batch.device)
            noise = torch.randn(batch.shape, generator=generator, dtype=batch.dtype, device=batch.device)
            x_t = d.q_sample(batch, tt, noise)
            output, _ = d.variance.split(d.model_output(model, x_t, tt), batch.shape[1])
            eps = d.parameterization.predict_eps(d, output, x_t, tt)
            per_image.append(eps.flatten(1).pow(2).mean(1).double())
        values = torch.cat(per_image)
        means.append(values.mean())
        errors.append(values.std() / math.sqrt(len(values)))
    return torch.stack(means), torch.stack(errors)


def trajectory_variances(d: GaussianDiffusion, gamma: torch.Tensor, timesteps: Sequence[int]) -> torch.Tensor:
    """sigma*^2 of each step of the trajectory ``timesteps`` (0-based, increasing; the step at
    timesteps[k] goes to timesteps[k-1], the first to x_0): lambda^2 + (sqrt(bbar_k / alpha_k) -
    sqrt(bbar_{k-1} - lambda^2))^2 (1 - Gamma_k), with Gamma clipped to [0, 1] (its range: by
    Jensen, E||E[eps | x_t]||^2 / d <= E||eps||^2 / d = 1), so sigma*^2 lies between lambda^2 and
    lambda^2 + (...)^2 whatever the estimate."""
    ab = d.alphas_cumprod[list(timesteps)]
    ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
    alpha, bbar, bbar_prev = ab / ab_prev, 1 - ab, 1 - ab_prev
    lam2 = bbar_prev / bbar * (1 - alpha)  # the DDPM posterior variance of the step (beta-tilde)
    gap = (bbar / alpha).sqrt() - (bbar_prev - lam2).clamp(min=0).sqrt()
    return lam2 + gap**2 * (1 - gamma.to(ab.dtype).clamp(0, 1))


class AnalyticVariance(VarianceChoice):
    """sigma*^2 per step of a (respaced) diffusion; a learned variance's channels, if the run has
    them, are split off and ignored."""

    name = "analytic"

    def __init__(self, variances: torch.Tensor, trained: VarianceChoice) -> None:
        self.log_variances, self.trained = variances.log(), trained

    def extra_channels(self, channels: int) -> int:
        return self.trained.extra_channels(channels)

    def split(self, output: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.trained.split(output, channels)[0], None

    def log_variance(self, d, var_output, x_t, t):
        return self.log_variances.to(x_t.device, x_t.dtype)[t].view(-1, *([1] * (x_t.ndim - 1)))


def analytic_diffusion(d: GaussianDiffusion, gamma: torch.Tensor, steps: int) -> tuple[GaussianDiffusion, torch.Tensor]:
    """The diffusion over ``steps`` respaced timesteps (all T when steps = T) with sigma*^2, and its
    timestep map (call the network through ``on_original_timesteps``). ``gamma`` holds Gamma at the
    kept timesteps, in their order."""
    short, timestep_map = respace(d, steps)
    variances = trajectory_variances(d, gamma, timestep_map.tolist())
    return (GaussianDiffusion(short.schedule, short.parameterization, AnalyticVariance(variances, d.variance),
                              short.decoder), timestep_map)
