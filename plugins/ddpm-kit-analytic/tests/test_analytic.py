"""Analytic-DPM against the Gaussian oracle (tests/oracle.py): for data N(m, s^2) per pixel,
Gamma_t = (1 - abar) / (abar s^2 + 1 - abar) in closed form, and the KL-optimal variance equals the
exact Var(x_{n-1} | x_n) of the joint Gaussian of (x_{n-1}, x_n), computed here in numpy from the
forward process alone."""

import numpy as np
import pytest
import torch

from ddpm_kit.api import get_registry, on_original_timesteps, sample_ancestral, spaced_timesteps
from ddpm_kit_analytic import analytic_diffusion, estimate_gamma, trajectory_variances
from oracle import M, S, EpsOracle, linear_betas  # tests/oracle.py (conftest.py puts tests/ on the path)

T = 1000
AB = np.cumprod(1 - linear_betas(T))


def closed_form_gamma(t) -> np.ndarray:
    ab = AB[np.asarray(t)]
    return (1 - ab) / (ab * S**2 + 1 - ab)


def exact_conditional_variance(t: int, prev: int | None) -> float:
    """Var(x_prev | x_t) per pixel of the joint Gaussian (x_prev = x_0 when prev is None)."""
    a_t, a_p = AB[t], (1.0 if prev is None else AB[prev])
    var_p, var_t = a_p * S**2 + 1 - a_p, a_t * S**2 + 1 - a_t
    cov = np.sqrt(a_p * a_t) * S**2 + np.sqrt(a_t / a_p) * (1 - a_p)  # x_t = sqrt(a_t/a_p) x_p + noise
    return var_p - cov**2 / var_t


def diffusion(param: str = "eps", variance: str = "fixed_beta"):
    from ddpm_kit.api import GaussianDiffusion

    r = get_registry(entry_points=False)
    return GaussianDiffusion(r.build("schedule", "linear", {"T": T}), r.build("parameterization", param),
                             r.build("variance", variance), r.build("decoder", "discretized_gaussian"))


@pytest.mark.parametrize("param", ["eps", "mu"])
def test_estimated_gamma_matches_its_closed_form_within_its_standard_error(param):
    timesteps = [0, 50, 300, 999]
    x0 = torch.from_numpy(M + S * np.random.default_rng(0).standard_normal((512, 1, 4, 4)))
    gamma, stderr = estimate_gamma(diffusion(param), EpsOracle(linear_betas(T), param), x0, timesteps,
                                   generator=torch.Generator().manual_seed(1))
    want = closed_form_gamma(timesteps)
    assert np.all(np.abs(gamma.numpy() - want) < 5 * stderr.numpy()), (gamma, want, stderr)
    # eps* is N(0, Gamma) per pixel, so an image's mean of 16 squares is Gamma chi2_16 / 16: the
    # standard error of 512 images is Gamma sqrt(2/16) / sqrt(512) (its own estimate is ~3% off)
    np.testing.assert_allclose(stderr.numpy(), want * np.sqrt(2 / 16) / np.sqrt(512), rtol=0.2)


@pytest.mark.parametrize("steps", [T, 50, 10])
def test_the_optimal_variance_is_the_exact_conditional_variance_of_gaussian_data(steps):
    keep = spaced_timesteps(T, steps)
    sigma2 = trajectory_variances(diffusion(), torch.from_numpy(closed_form_gamma(keep)), keep).numpy()
    exact = [exact_conditional_variance(t, prev) for t, prev in zip(keep, [None] + keep[:-1])]
    np.testing.assert_allclose(sigma2, exact, rtol=1e-9)
    d = diffusion()
    beta_tilde = [float(d.posterior_variance[t]) for t in keep] if steps == T else None
    if beta_tilde is not None:  # Var(x_{t-1} | x_t) of this data lies between beta-tilde and beta
        assert np.all(sigma2[1:] >= np.array(beta_tilde[1:]) - 1e-15)
        assert np.all(sigma2[1:] <= d.betas.numpy()[keep][1:] + 1e-15)


@pytest.mark.parametrize("steps", [10, 50])
def test_sampling_with_the_optimal_variance_is_exact_for_gaussian_data(steps):
    """With the exact eps and the exact conditional variance the respaced reverse chain reproduces
    the forward marginals, so the samples (the last step returns its mean, E[x_0 | x_{t_1}]) have
    mean m and variance s^2 - Var(x_0 | x_{t_1}), whatever the number of steps."""
    keep = spaced_timesteps(T, steps)
    d = diffusion()
    short, timestep_map = analytic_diffusion(d, torch.from_numpy(closed_form_gamma(keep)), steps)
    x_T = torch.randn(4096, 1, 2, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = sample_ancestral(short, on_original_timesteps(EpsOracle(linear_betas(T)), timestep_map), x_T,
                         generator=torch.Generator().manual_seed(3), clip_denoised=False)
    var = S**2 - exact_conditional_variance(keep[0], None)
    n = x.numel()  # 16,384 draws; x_T's N(0, 1) stands in for x_T ~ q, exact to abar_T ~ 4e-5
    assert abs(x.mean().item() - M) < 5 * np.sqrt(var / n) + 1e-3
    assert abs(x.var().item() - var) < 5 * var * np.sqrt(2 / n) + 1e-3
