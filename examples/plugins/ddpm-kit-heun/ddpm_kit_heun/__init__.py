"""Heun's method on the probability-flow ODE: an example sampler plugin, using ``ddpm_kit.api`` only.

In the variables of Karras et al. (2022), xbar = x / sqrt(abar) and sigma = sqrt((1 - abar) / abar),
the DDIM / probability-flow ODE of a DDPM is dxbar / dsigma = eps(x, t) (Song et al. 2021, eq. 14;
Karras et al. eq. 4 with s(t) = 1). This sampler integrates it with Heun's 2nd-order method
(Karras et al. Algorithm 1, k-diffusion's ``sample_heun`` with no churn) from the sigma of the
last trained timestep to 0, over ``steps`` of the trained timesteps (``spaced_timesteps``); the
last step, to sigma = 0, is an Euler step, as in Algorithm 1. It draws no noise: the same x_T
always gives the same sample. 2 * steps - 1 network calls.

What it samples: every parameterization (eps, x0, mu, v, ...), because it asks the run's own
diffusion for eps-hat at the trained timestep the network was called with
(``Parameterization.predict_eps`` on the original, not a respaced, diffusion: a respaced
diffusion would read a mu network's output with the respaced chain's posterior coefficients).
A learned variance is ignored (the ODE has no variance). It refuses (``CannotSample``) a
schedule whose alpha-bar reaches 0 (beta = 1 at the last step, as ``jsd``): the ODE would start
at sigma = infinity.
"""

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from ddpm_kit.api import CannotSample, GaussianDiffusion, Model, hookimpl, spaced_timesteps, validate_steps


def trajectory(num_timesteps: int, steps: int) -> list[int]:
    """The trained timesteps (0-based, descending) the sampler visits: ``steps`` of them, evenly
    spaced from T-1 down to 0 (one step: T-1 alone)."""
    keep = spaced_timesteps(num_timesteps, steps) if steps > 1 else [num_timesteps - 1]
    return sorted(keep, reverse=True)


def _eps_and_x0(d: GaussianDiffusion, model: Model, x: torch.Tensor, t_index: int):
    """eps-hat and x0-hat at trained timestep ``t_index``, whatever the network predicts."""
    t = torch.full((x.shape[0],), t_index, device=x.device, dtype=torch.long)
    output, _ = d.variance.split(d.model_output(model, x, t), x.shape[1])  # a learned variance's channels: unused
    return d.parameterization.predict_eps(d, output, x, t), d.parameterization.predict_x0(d, output, x, t)


@torch.no_grad()
def sample_heun(
    diffusion: GaussianDiffusion,
    model: Model,
    x_T: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    noise: Callable[[torch.Tensor], torch.Tensor] | None = None,
    steps: int = 20,
) -> torch.Tensor:
    """x_T -> x_0 by Heun's method on dxbar/dsigma = eps over ``steps`` trained timesteps.

    ``generator`` and ``noise`` are accepted (the engine passes ``noise``) and never used.
    """
    d = diffusion
    visit = trajectory(d.num_timesteps, steps)
    abar = [float(d.alphas_cumprod[t]) for t in visit]
    sigmas = [math.sqrt((1 - a) / a) for a in abar] + [0.0]
    x = x_T
    for k, t in enumerate(visit):
        sigma, sigma_next = sigmas[k], sigmas[k + 1]
        eps, x0_hat = _eps_and_x0(d, model, x, t)
        xbar = x * math.sqrt(1 + sigma**2)  # x / sqrt(abar), since 1 + sigma^2 = 1 / abar
        if sigma_next == 0:  # the last step: Euler to sigma = 0, i.e. x0-hat
            x = xbar + (sigma_next - sigma) * eps
        else:
            scale_next = 1 / math.sqrt(1 + sigma_next**2)  # sqrt(abar) at the next timestep
            euler = (xbar + (sigma_next - sigma) * eps) * scale_next
            eps_next, _ = _eps_and_x0(d, model, euler, visit[k + 1])
            x = (xbar + (sigma_next - sigma) * 0.5 * (eps + eps_next)) * scale_next
        if callback is not None:
            callback({"i": len(visit) - 1 - k, "x": x, "x0_hat": x0_hat})
    return x


def heun(steps: int = 20, num_timesteps: int | None = None, diffusion: GaussianDiffusion | None = None):
    """Heun's 2nd-order ODE sampler (Karras et al. 2022, Alg. 1): deterministic, 2 steps - 1 network calls.

    ``steps`` of the trained timesteps, evenly spaced from T-1 to 0. The engine supplies
    ``num_timesteps`` (to refuse steps > T) and the run's ``diffusion`` (to refuse a schedule whose
    alpha-bar reaches 0).
    """
    validate_steps(steps, num_timesteps)
    if diffusion is not None and not float(diffusion.alphas_cumprod[-1]) > 0:
        raise CannotSample("sampler 'heun' needs alpha-bar > 0 at the last timestep (its ODE starts at sigma = "
                           "sqrt((1 - abar) / abar)); this schedule reaches 0 (beta = 1 at its last step)")
    return partial(sample_heun, steps=steps)


@hookimpl
def register_samplers(register):
    register("heun", heun)
