"""Analytic-DPM against the Gaussian oracle (ddpm_kit.testing.oracle): for data N(m, s^2) per pixel,
Gamma_t = (1 - abar) / (abar s^2 + 1 - abar) in closed form, and the KL-optimal variance equals the
exact Var(x_{n-1} | x_n) of the joint Gaussian of (x_{n-1}, x_n), computed here in numpy from the
forward process alone."""

import numpy as np
import pytest
import torch

from ddpm_kit.api import get_registry, on_original_timesteps, sample_ancestral, spaced_timesteps
from ddpm_kit_analytic import analytic_diffusion, estimate_gamma, trajectory_variances
from ddpm_kit.testing import diffusion as make_diffusion
from ddpm_kit.testing.oracle import M, S, EpsOracle, linear_betas
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
    return make_diffusion(get_registry(entry_points=False), parameterization=param, variance=variance, T=T)


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


def exact_log_variances() -> np.ndarray:
    """log Var(x_{t-1} | x_t) of the joint Gaussian at every t (t = 0: Var(x_0 | x_1)), from the
    forward process alone: the KL-optimal log sigma_t^2 for this data."""
    return np.log([exact_conditional_variance(t, t - 1 if t else None) for t in range(T)])


def test_the_bound_with_the_optimal_variance_is_below_the_bounds_with_beta_and_beta_tilde():
    """The closed-form expected bound (ddpm_kit.testing.oracle, the reference 7.457 with beta-tilde and 6.844
    with beta) with sigma_t^2 = Var(x_{t-1} | x_t): lower than both, and still above the entropy
    of the quantized data (6.720 bits/dim: the bound of any model is)."""
    from ddpm_kit.testing import oracle

    bounds = {v: oracle.expected_bound(linear_betas(T), v)["total"] for v in ("fixed_beta", "fixed_beta_tilde")}
    optimal = oracle.expected_bound(linear_betas(T), exact_log_variances())
    assert bounds["fixed_beta"] == pytest.approx(6.844, abs=2e-3) and bounds["fixed_beta_tilde"] == pytest.approx(7.457, abs=2e-3)
    assert oracle.entropy_bpd() < optimal["total"] < bounds["fixed_beta"] - 0.01
    assert optimal["kl"] < oracle.expected_bound(linear_betas(T), "fixed_beta")["kl"]


@pytest.mark.parametrize("param", ["eps", "x0"])
def test_every_bound_term_with_the_analytic_variance_equals_the_oracles_estimator(param):
    """calc_bpd_loop on analytic_diffusion (closed-form Gamma) against the numpy single-sample
    estimator of the bound (ddpm_kit.testing.oracle) with log sigma_t^2 = log Var(x_{t-1} | x_t) of the
    joint Gaussian, on the same x0 and noise: no Monte-Carlo error, so any seed passes."""
    from ddpm_kit.testing import oracle
    from ddpm_kit.testing import statistical_seed as test_seed

    d = diffusion(param)
    short, timestep_map = analytic_diffusion(d, torch.from_numpy(closed_form_gamma(range(T))), T)
    seed = test_seed(41)
    g = torch.Generator().manual_seed(seed)
    x0 = oracle.quantize(M + S * torch.randn(4, 1, 4, 4, generator=g, dtype=torch.float64))
    out = short.calc_bpd_loop(on_original_timesteps(EpsOracle(linear_betas(T), param), timestep_map), x0,
                              generator=torch.Generator().manual_seed(seed + 1), timesteps_per_batch=10)
    g = torch.Generator().manual_seed(seed + 1)  # the loop draws eps for t = T-1 first, down to t = 0
    eps = torch.stack([torch.randn(x0.shape, generator=g, dtype=x0.dtype) for _ in range(T)]).flip(0)
    expected = oracle.sampled_bound_terms(linear_betas(T), exact_log_variances(), x0.flatten(1).numpy(),
                                          eps.flatten(2).numpy())
    got = torch.cat([out["vb"], out["prior_bpd"][:, None]], 1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-10)


def reference_sigma2(r: int, s: int, ms_eps: np.ndarray, betas: np.ndarray) -> float:
    """baofff/Analytic-DPM, cifar_imagenet_codes/core/inference/sampler/reverse_ddpm.py lines 77-96
    (reverse_ddpm_ms_eps), transcribed: 1-based timesteps with betas[0] = 0, the step r -> s > 0."""
    betas = np.append(0.0, betas)
    alphas = 1.0 - betas
    cum_alphas = alphas.cumprod()
    cum_betas = 1.0 - cum_alphas
    skip_alpha = alphas[s + 1: r + 1].prod()
    skip_beta = 1.0 - skip_alpha
    sigma2_small = skip_beta * cum_betas[s] / cum_betas[r]
    cov_x_0_pred = cum_betas[r] / cum_alphas[r] * (1.0 - ms_eps[r])
    cov_x_0_pred_clamp = np.clip(cov_x_0_pred, 0.0, 1.0)
    coeff_cov_x_0 = cum_alphas[s] * skip_beta**2 / cum_betas[r] ** 2
    return sigma2_small + coeff_cov_x_0 * cov_x_0_pred_clamp


def test_the_optimal_variance_equals_the_reference_codes_formula_clips_included():
    """Gamma values that hit both of the reference's clips (Gamma > 1: sigma^2 = beta-tilde; 1 - Gamma
    large at high noise: the x_0 variance capped at 1) and ordinary ones, on a respaced trajectory."""
    rng = np.random.default_rng(0)
    gamma = np.concatenate([rng.uniform(0.0, 1.3, T // 2), rng.uniform(-0.5, 1.1, T - T // 2)])
    keep = [0, 3, 10, 80, 300, 610, 999]
    sigma2 = trajectory_variances(diffusion(), torch.from_numpy(gamma[keep]), keep).numpy()
    ms_eps = np.append(0.0, gamma)  # the reference's Gamma, 1-based
    want = [reference_sigma2(r + 1, s + 1, ms_eps, linear_betas(T)) for s, r in zip(keep[:-1], keep[1:])]
    np.testing.assert_allclose(sigma2[1:], want, rtol=1e-10)
    assert (gamma[keep] > 1).any() and (np.append(0, 1 - gamma) * np.append(0, 1 / AB - 1) > 1)[np.array(keep) + 1].any()


@pytest.mark.parametrize("steps,reference", [
    (10, [1, 2, 5, 10, 19, 35, 62, 110, 203, 1000]),
    (25, [1, 2, 3, 4, 5, 7, 9, 11, 14, 17, 21, 26, 32, 39, 48, 59, 72, 88, 107, 131, 161, 200, 255, 343, 1000])])
def test_the_optimal_trajectory_is_the_reference_codes_dynamic_programme(steps, reference):
    """The paths the reference code's _dp_seg (core/inference/utils.py) returns for Gamma_n =
    float32(1 - abar_n / 2) on the linear schedule (1-based; run from the repository by hand): its
    cost log(1 - beta_{r|s} Gamma_r / bbar_r) differs from log(sigma*^2 / lambda^2) by a sum that
    telescopes, so the argmin is the same path."""
    from ddpm_kit_analytic import optimal_trajectory

    gamma = torch.from_numpy((1 - 0.5 * AB).astype(np.float32).astype(np.float64))
    assert optimal_trajectory(diffusion(), gamma, steps) == [n - 1 for n in reference]


def test_where_gamma_exceeds_one_the_trajectory_is_split_as_the_reference_code_splits_it():
    """An estimate above 1 at the 10 noisiest timesteps (the reference's _split: the programme runs
    below T - 20 with 9 of 10 steps, the last is T): the reference code's path, 1-based
    [1, 3, 7, 15, 29, 54, 100, 192, 980, 1000]; without the split, the programme jumps from the
    first Gamma > 1 to timestep 0 in one free step."""
    from ddpm_kit_analytic import optimal_trajectory

    gamma = (1 - 0.5 * AB).astype(np.float32).astype(np.float64)
    gamma[990:] = 1.001
    path = optimal_trajectory(diffusion(), torch.from_numpy(gamma), 10)
    assert path == [n - 1 for n in [1, 3, 7, 15, 29, 54, 100, 192, 980, 1000]]


def test_the_optimal_trajectory_has_the_smallest_bound_of_every_path_tried():
    """With the oracle's Gamma, the bound's KL part (sum of d/2 log(sigma*^2 / lambda^2)) of the
    optimal 10-step path is below that of the even path and of 200 random 10-step paths."""
    from ddpm_kit_analytic import optimal_trajectory

    d, gamma = diffusion(), torch.from_numpy(closed_form_gamma(range(T)))

    def kl(path):
        sigma2 = trajectory_variances(d, gamma[path], path)[1:].numpy()
        ab = AB[path]
        lam2 = (1 - ab[:-1]) / (1 - ab[1:]) * (1 - ab[1:] / ab[:-1])
        return 0.5 * np.log(sigma2 / lam2).sum()

    best = kl(optimal_trajectory(d, gamma, 10))
    rng = np.random.default_rng(1)
    others = [spaced_timesteps(T, 10)] + [[0, *sorted(rng.choice(np.arange(1, T - 1), 8, replace=False)), T - 1]
                                          for _ in range(200)]
    assert all(best <= kl(list(map(int, p))) + 1e-12 for p in others)


def test_the_sampling_clip_caps_only_the_step_into_the_first_kept_timestep():
    """The reference code's sigma2_threshold = (clip_pixel * 2 / 255 * (pi / 2) ** 0.5) ** 2
    (reverse_ddpm.py line 105) on the step ns[1] -> ns[0] only; every other step keeps sigma*^2."""
    keep = spaced_timesteps(T, 10)
    gamma = torch.from_numpy(closed_form_gamma(keep))
    threshold = (2 * 2.0 / 255.0 * (np.pi / 2.0) ** 0.5) ** 2
    plain, _ = analytic_diffusion(diffusion(), gamma, 10)
    clipped, _ = analytic_diffusion(diffusion(), gamma, 10, clip_first=threshold)
    before, after = plain.variance.log_variances.exp(), clipped.variance.log_variances.exp()
    assert before[1] > threshold and after[1] == pytest.approx(threshold, rel=1e-12)
    assert torch.equal(torch.cat([before[:1], before[2:]]), torch.cat([after[:1], after[2:]]))
