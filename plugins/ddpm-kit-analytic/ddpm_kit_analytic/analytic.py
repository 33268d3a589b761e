"""Analytic-DPM (Bao et al. 2022, Theorem 1 with lambda^2 the DDPM posterior variance): Gamma_n,
the optimal variance on a trajectory, and a respaced diffusion that samples with it."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from ddpm_kit.api import GaussianDiffusion, Model, VarianceChoice, respace, spaced_timesteps


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


def optimal_variance(ab: torch.Tensor, ab_prev: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """sigma*^2 of the step from alpha-bar ``ab`` to ``ab_prev`` (> ab; 1 for x_0), given Gamma at
    the step's start: lambda^2 + (sqrt(bbar / alpha) - sqrt(bbar_prev - lambda^2))^2 (1 - Gamma)
    (Bao et al. Theorem 1, lambda^2 = beta-tilde; alpha = ab / ab_prev), broadcast over its inputs.

    Written through the variance of x_0 given x_t the estimate implies, bbar / abar (1 - Gamma),
    clipped to [0, 1] as the reference code does (Theorem 2's bounds: at least 0, and at most
    ((b - a) / 2)^2 = 1 for data in [a, b] = [-1, 1]): so sigma*^2 never falls below lambda^2, and a
    noisy Gamma at high noise cannot make it larger than data in [-1, 1] allow."""
    alpha, bbar, bbar_prev = ab / ab_prev, 1 - ab, 1 - ab_prev
    lam2 = bbar_prev / bbar * (1 - alpha)  # the DDPM posterior variance of the step (beta-tilde)
    gap = (bbar / alpha).sqrt() - (bbar_prev - lam2).clamp(min=0).sqrt()
    x0_variance = (bbar / ab * (1 - gamma.to(ab.dtype))).clamp(0, 1)
    return lam2 + gap**2 * ab / bbar * x0_variance


def trajectory_variances(d: GaussianDiffusion, gamma: torch.Tensor, timesteps: Sequence[int]) -> torch.Tensor:
    """sigma*^2 of each step of the trajectory ``timesteps`` (0-based, increasing; the step at
    timesteps[k] goes to timesteps[k-1], the first to x_0), ``gamma`` at those timesteps.

    The step to x_0 has lambda^2 = 0, so an estimate Gamma >= 1 there would give the decoder a zero
    variance (an infinite L_0): its variance is at least Ho et al.'s decoder variance, beta-tilde of
    the second timestep (the reference code's bound uses that one alone)."""
    ab = d.alphas_cumprod[list(timesteps)]
    variances = optimal_variance(ab, torch.cat([ab.new_ones(1), ab[:-1]]), gamma)
    variances[0] = variances[0].clamp(min=float(d.posterior_log_variance_clipped[0].exp()))
    return variances


def optimal_trajectory(d: GaussianDiffusion, gamma: torch.Tensor, steps: int) -> list[int]:
    """The ``steps`` timesteps (0-based, from 0 to T-1, both kept) whose bound with sigma*^2 is
    smallest (Bao et al. section 4, dynamic programming): with the optimal variance the KL of the
    step r -> s is d/2 log(sigma*^2 / lambda^2) per image, so the path minimises the sum of those over
    its steps (the decoder term at timestep 0 and the prior at T-1 are the same for every path).

    Where the estimate says Gamma > 1 (x_0 known exactly: noise in the estimate at high noise
    levels, where the true Gamma is just below 1) a step would cost nothing, and the programme
    would jump there from timestep 0 in one step. As the reference code does (``_split`` in
    core/inference/utils.py), the programme runs below T - 2 (T - t_1) only, t_1 the first timestep
    with Gamma > 1, with its share ceil((1 - 0.8 bad / T) K) of the steps; the rest are evenly
    spaced up to T-1. ``gamma`` holds Gamma at all T timesteps. O(steps T^2) time, O(T^2) memory."""
    T = d.num_timesteps
    if not 2 <= steps <= T:
        raise ValueError(f"an optimal trajectory has 2..{T} steps (both ends are kept), got {steps}")
    if steps == T:
        return list(range(T))
    above = torch.nonzero(gamma > 1)
    bad = 2 * (T - int(above[0])) if len(above) else 0
    n1 = T - bad
    k1 = math.ceil((1 - 0.8 * bad / T) * steps)
    k1 = max(steps - bad, min(k1, n1))
    if bad > 0 and k1 == steps:
        k1 = steps - 1
    if n1 < 2 or k1 < 2:  # Gamma > 1 over half the chain or more: nothing to optimise
        warnings.warn(f"Gamma exceeds 1 from timestep {T - bad // 2} on (over half the chain): the estimate is "
                      f"not usable for a trajectory; {steps} evenly spaced steps instead", stacklevel=2)
        return spaced_timesteps(T, steps)
    k2 = steps - k1
    rest = [round(T - (T - n1) / k2 * k) - 1 for k in range(k2)][::-1]  # the reference's 1-based round()
    return _least_kl_path(d, gamma[:n1], k1) + rest


def _least_kl_path(d: GaussianDiffusion, gamma: torch.Tensor, steps: int) -> list[int]:
    """The ``steps``-node path from timestep 0 to len(gamma) - 1 with the least sum of log(sigma*^2
    / lambda^2) over its steps."""
    n = len(gamma)
    if steps == n:
        return list(range(n))
    ab = d.alphas_cumprod[:n]
    s, r = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    later = r > s
    ab_s, ab_r = ab[s], ab[r]
    lam2 = (1 - ab_s) / (1 - ab_r) * (1 - ab_r / ab_s)
    sigma2 = optimal_variance(ab_r, ab_s, gamma.to(ab.dtype)[r])
    cost = torch.where(later, (sigma2 / torch.where(later, lam2, 1.0)).log(), torch.inf).numpy()
    best = np.full(n, np.inf)
    best[0] = 0.0  # a one-node path at timestep 0
    came_from = []
    for _ in range(steps - 1):
        total = best[:, None] + cost  # [s, r]: the path to s, then the step r -> s
        came_from.append(total.argmin(0))
        best = total.min(0)
    path = [n - 1]
    for back in reversed(came_from):
        path.append(int(back[path[-1]]))
    return path[::-1]


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


def analytic_diffusion(d: GaussianDiffusion, gamma: torch.Tensor, steps: int | list[int], *,
                       clip_first: float | None = None) -> tuple[GaussianDiffusion, torch.Tensor]:
    """The diffusion over ``steps`` respaced timesteps (all T when steps = T; or the given 0-based
    timesteps, e.g. an ``optimal_trajectory``) with sigma*^2, and its timestep map (call the
    network through ``on_original_timesteps``). ``gamma`` holds Gamma at the kept timesteps, in
    their order. ``clip_first``: a cap on the variance of the step into the first kept timestep
    (index 1 of the respaced chain; sampling only, as the reference code's ``clip_sigma_idx = 1``)."""
    short, timestep_map = respace(d, steps)
    variances = trajectory_variances(d, gamma, timestep_map.tolist())
    if clip_first is not None and len(variances) > 1:
        variances[1] = variances[1].clamp(max=clip_first)
    return short.with_variance(AnalyticVariance(variances, d.variance)), timestep_map
