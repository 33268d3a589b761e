"""Timestep respacing and DDIM (Nichol & Dhariwal 2021 section 4; Song et al. 2021 eq. 12)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from ddpm_kit.api import (CannotSample, DdpmKitError, GaussianDiffusion, NoiseSource, VarianceChoice, get_registry,
                          on_original_timesteps, randn_like, respace, sample_ancestral, validate_steps)


@torch.no_grad()
def sample_ddim(d: GaussianDiffusion, model, x_T: torch.Tensor, *, generator: torch.Generator | None = None,
                callback: Callable[[dict[str, Any]], None] | None = None, noise: NoiseSource | None = None,
                eta: float = 0.0, clip_denoised: bool = True) -> torch.Tensor:
    """x_{t-1} = sqrt(ab_prev) x0-hat + sqrt(1 - ab_prev - s^2) eps-hat + s z, with
    s = eta sqrt((1 - ab_prev)/(1 - ab)) sqrt(1 - ab/ab_prev); eta = 1 is ancestral with beta-tilde."""
    x = x_T
    for i in reversed(range(d.num_timesteps)):
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        p = d.p_mean_variance(model, x, t, clip_denoised=clip_denoised)
        eps = d.eps_from_x0(x, t, p.pred_x0)
        ab, ab_prev = d.gather("alphas_cumprod", t, x), d.gather("alphas_cumprod_prev", t, x)
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
        x = ab_prev.sqrt() * p.pred_x0 + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
        if i > 0 and eta > 0:
            x = x + sigma * randn_like(x, generator, noise)
        if callback is not None:
            callback({"i": i, "x": x, "x0_hat": p.pred_x0})
    return x


def _respaced_call(inner, steps: int | None, d, model, x_T, variance: VarianceChoice | None = None, **kw):
    if steps is not None and steps < d.num_timesteps:
        d, timestep_map = respace(d, steps)
        model = on_original_timesteps(model, timestep_map)
    if variance is not None:
        d = d.with_variance(variance)
    return inner(d, model, x_T, **kw)


def ddim(steps: int | None = None, eta: float = 0.0, clip_denoised: bool = True, num_timesteps: int | None = None):
    """DDIM over ``steps`` respaced timesteps (all T when None); eta=0 is deterministic."""
    if steps is not None:
        validate_steps(steps, num_timesteps)
    return partial(_respaced_call, partial(sample_ddim, eta=eta, clip_denoised=clip_denoised), steps)


def respaced(steps: int = 100, clip_denoised: bool = True, variance: str | None = None,
             num_timesteps: int | None = None, diffusion: GaussianDiffusion | None = None, registry=None):
    """Ancestral sampling over ``steps`` evenly respaced timesteps (Improved DDPM section 4), with the
    run's variance on the respaced chain, or the fixed ``variance`` named (``fixed_beta_tilde``:
    the respaced chain's own posterior variance; ``fixed_beta``: its betas) for a fixed-variance run."""
    validate_steps(steps, num_timesteps)
    fixed = None
    if variance is not None:
        fixed = (registry or get_registry()).build("variance", variance)  # the run's registry, from the engine
        try:
            if diffusion is not None:
                diffusion.with_variance(fixed)
        except DdpmKitError as exc:
            raise CannotSample(f"sampler 'respaced': {exc}") from None
    return partial(_respaced_call, partial(sample_ancestral, clip_denoised=clip_denoised), steps, variance=fixed)
