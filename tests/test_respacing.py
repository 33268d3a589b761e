"""Respacing (ddpm_kit.respacing): a K-step chain over a trained T-step one, held against the
analytic Gaussian oracle of ddpm_kit.testing.oracle."""

import numpy as np
import pytest
import torch

from ddpm_kit.api import DdpmKitError, on_original_timesteps, respace, sample_ancestral, spaced_timesteps
from helpers import make_diffusion
from ddpm_kit.testing.oracle import M, S, EpsOracle, linear_betas
def test_spaced_timesteps_are_even_and_keep_both_ends():
    assert spaced_timesteps(1000, 5) == [0, 250, 500, 749, 999]
    assert spaced_timesteps(10, 10) == list(range(10))
    with pytest.raises(DdpmKitError, match=r"steps must lie in 1\.\.10 \(the schedule's T\), got 11"):
        spaced_timesteps(10, 11)


def test_the_respaced_chain_keeps_alpha_bar_at_the_kept_steps(registry):
    d = make_diffusion(registry, variance="fixed_beta_tilde")
    short, timestep_map = respace(d, 50)
    assert torch.allclose(short.alphas_cumprod, d.alphas_cumprod[timestep_map], rtol=1e-12)


@pytest.mark.parametrize("steps", [10, 50])
def test_every_parameterization_of_the_same_oracle_samples_alike_on_a_respaced_chain(registry, steps):
    """eps, x0 and mu outputs of the one exact predictor name the same x0-hat, so respaced
    ancestral sampling must give the same images whichever the network outputs; mu used to be
    read with the respaced chain's posterior coefficients (sample std 2.4 instead of ~0.2)."""
    x_T = torch.randn(256, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    samples = {}
    for param in ("eps", "x0", "mu"):
        d = make_diffusion(registry, parameterization=param, variance="fixed_beta_tilde")
        short, timestep_map = respace(d, steps)
        model = on_original_timesteps(EpsOracle(linear_betas(), param), timestep_map)
        samples[param] = sample_ancestral(short, model, x_T, generator=torch.Generator().manual_seed(1),
                                          clip_denoised=False)
    assert torch.allclose(samples["mu"], samples["eps"], atol=1e-6)
    assert torch.allclose(samples["x0"], samples["eps"], atol=1e-6)
    mean, std = respaced_ancestral_moments(steps)
    n = samples["mu"].numel()  # 4,096 draws: standard errors std/sqrt(n) and std/sqrt(2n)
    assert abs(samples["mu"].mean().item() - mean) < 5 * std / np.sqrt(n)
    assert abs(samples["mu"].std().item() - std) < 5 * std / np.sqrt(2 * n)


def respaced_ancestral_moments(steps: int, T: int = 1000, m: float = M, s: float = S) -> tuple[float, float]:
    """Mean and std of K-step respaced ancestral samples (sigma^2 = beta-tilde of the short chain)
    driven by the exact predictor of N(m, s^2) data, in float64 numpy from the paper's equations:
    each step is linear in x_t, x_{k-1} = c1 x0_hat(x_t) + c2 x_t + sigma z, with x0_hat = E[x0 | x_t]."""
    ab_all = np.cumprod(1 - linear_betas(T))
    keep = np.unique(np.round(np.linspace(0, T - 1, steps)).astype(int))
    ab = ab_all[keep]
    ab_prev = np.append(1.0, ab[:-1])
    beta = 1 - ab / ab_prev
    mean, var = 0.0, 1.0  # x_T ~ N(0, 1)
    for k in reversed(range(len(keep))):
        gain = s**2 * np.sqrt(ab[k]) / (ab[k] * s**2 + 1 - ab[k])  # x0_hat = m + gain (x - sqrt(ab) m)
        c1 = beta[k] * np.sqrt(ab_prev[k]) / (1 - ab[k])
        c2 = (1 - ab_prev[k]) * np.sqrt(1 - beta[k]) / (1 - ab[k])
        mean = c1 * (m + gain * (mean - np.sqrt(ab[k]) * m)) + c2 * mean
        var = (c1 * gain + c2) ** 2 * var + (beta[k] * (1 - ab_prev[k]) / (1 - ab[k]) if k > 0 else 0.0)
    return float(mean), float(np.sqrt(var))
