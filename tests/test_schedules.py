"""Schedules and the derived quantities, against reference values, closed forms and diffusers."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from helpers import make_diffusion


def test_linear_schedule_reference_numbers(registry):
    d = make_diffusion(registry)
    assert d.alphas_cumprod[-1].item() == pytest.approx(4.0358e-5, rel=1e-4)
    assert d.posterior_variance[1].item() == pytest.approx(5.4532e-5, rel=1e-4)
    assert d.posterior_log_variance_clipped[0].item() == pytest.approx(-9.8167, abs=1e-4)
    assert d.betas.dtype == torch.float64


def test_prior_bpd_reference_value(registry):
    d = make_diffusion(registry)
    for v in (1.0, -1.0):
        x0 = torch.full((1, 3, 4, 4), v)
        assert d.prior_bpd(x0).item() == pytest.approx(2.91e-5, rel=2e-3)


@pytest.mark.parametrize("ours,theirs", [("linear", "linear"), ("quad", "scaled_linear")])
def test_betas_match_diffusers(registry, ours, theirs):
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule=theirs, beta_start=1e-4, beta_end=0.02)
    ours_b = registry.build("schedule", ours, {"T": 1000}).betas
    np.testing.assert_allclose(ours_b.numpy(), sched.betas.double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.cumprod(1 - ours_b.numpy()), sched.alphas_cumprod.double().numpy(), rtol=1e-5)


def test_jsd_const_and_warmup_closed_forms(registry):
    T = 10
    jsd = registry.build("schedule", "jsd", {"T": T}).betas.numpy()
    np.testing.assert_allclose(jsd, [1 / (T - i) for i in range(T)])
    assert (registry.build("schedule", "const", {"T": T, "beta_end": 0.3}).betas.numpy() == 0.3).all()
    w = registry.build("schedule", "warmup50", {"T": T, "beta_start": 0.1, "beta_end": 0.5}).betas.numpy()
    np.testing.assert_allclose(w, [0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    w10 = registry.build("schedule", "warmup10", {"T": 20, "beta_start": 0.1, "beta_end": 0.5}).betas.numpy()
    np.testing.assert_allclose(w10, [0.1, 0.5] + [0.5] * 18)


@pytest.mark.parametrize("T", [2, 7, 100, 4000])
def test_any_T_posterior_is_the_product_of_gaussians(registry, T):
    """beta-tilde and mu-tilde coefficients from Bayes' rule on q(x_t|x_{t-1}) q(x_{t-1}|x_0)."""
    d = make_diffusion(registry, T=T)
    b = d.betas.numpy()
    ab = np.cumprod(1 - b)
    for t in range(1, T):
        prior_var, prior_mean_coef = 1 - ab[t - 1], math.sqrt(ab[t - 1])  # q(x_{t-1} | x0)
        lik_prec = (1 - b[t]) / b[t]  # x_t = sqrt(1-b) x_{t-1} + sqrt(b) e
        post_var = 1 / (1 / prior_var + lik_prec)
        assert d.posterior_variance[t].item() == pytest.approx(post_var, rel=1e-9)
        assert d.posterior_mean_coef1[t].item() == pytest.approx(post_var * prior_mean_coef / prior_var, rel=1e-9)
        assert d.posterior_mean_coef2[t].item() == pytest.approx(post_var * math.sqrt(1 - b[t]) / b[t], rel=1e-9)


def test_bad_schedule_values_are_rejected(registry):
    from ddpm_kit.errors import DdpmKitError

    with pytest.raises(DdpmKitError, match="schedule 'const' .* failed to build: ValueError: every beta must lie in"):
        registry.build("schedule", "const", {"T": 5, "beta_end": 1.5})
    with pytest.raises(DdpmKitError, match="parameter 'T'"):
        registry.build("schedule", "linear", {"T": "many"})


def test_schedule_defaults_are_the_papers(registry):
    """Ho et al. sec. 4: T = 1000, beta_1 = 1e-4 to beta_T = 0.02 (linear); the reference code's
    quad / const / jsd / warmup10 / warmup50 use the same end points by default."""
    from ddpm_kit.builtins import schedules

    paper = np.linspace(1e-4, 0.02, 1000)
    defaults = {name: getattr(schedules, name)().betas.numpy() for name in
                ("linear", "quad", "const", "jsd", "warmup10", "warmup50")}
    for name, betas in defaults.items():  # the registry fills in the same defaults
        np.testing.assert_array_equal(registry.build("schedule", name).betas.numpy(), betas)
    assert all(len(b) == 1000 for b in defaults.values())
    np.testing.assert_allclose(defaults["linear"], paper, rtol=1e-12)
    np.testing.assert_allclose(defaults["quad"], np.linspace(1e-4 ** 0.5, 0.02 ** 0.5, 1000) ** 2, rtol=1e-12)
    np.testing.assert_allclose(defaults["const"], np.full(1000, 0.02), rtol=1e-12)
    np.testing.assert_allclose(defaults["jsd"], 1.0 / np.linspace(1000, 1, 1000), rtol=1e-12)
    for name, fraction in (("warmup10", 0.1), ("warmup50", 0.5)):
        n = int(1000 * fraction)
        np.testing.assert_allclose(defaults[name][:n], np.linspace(1e-4, 0.02, n), rtol=1e-12)
        np.testing.assert_allclose(defaults[name][n:], 0.02, rtol=1e-12)


def test_forward_and_posterior_gaussians_are_eqs_4_6_7(registry):
    """q(x_t | x_0) = N(sqrt(ab) x0, 1 - ab) and q(x_{t-1} | x_t, x0) = N(mu-tilde, beta-tilde), with
    log beta-tilde clipped at t = 0 to its value at t = 1 (Ho's code): all written out in numpy."""
    d = make_diffusion(registry)
    betas = np.linspace(1e-4, 0.02, 1000)
    ab = np.cumprod(1 - betas)
    ab_prev = np.append(1.0, ab[:-1])
    tilde = betas * (1 - ab_prev) / (1 - ab)
    g = torch.Generator().manual_seed(0)
    x0, x_t = (torch.randn(4, 1, 2, 2, generator=g, dtype=torch.float64) for _ in range(2))
    t = torch.tensor([0, 1, 500, 999])
    col = (lambda v: torch.from_numpy(v[t.numpy()]).view(-1, 1, 1, 1).expand_as(x0))
    mean, var, log_var = d.q_mean_variance(x0, t)
    torch.testing.assert_close(mean, col(np.sqrt(ab)) * x0, rtol=1e-12, atol=0)
    torch.testing.assert_close(var, col(1 - ab), rtol=1e-12, atol=0)
    torch.testing.assert_close(log_var, col(np.log(1 - ab)), rtol=1e-12, atol=0)
    mean, var, log_var = d.q_posterior_mean_variance(x0, x_t, t)
    coef1, coef2 = betas * np.sqrt(ab_prev) / (1 - ab), (1 - ab_prev) * np.sqrt(1 - betas) / (1 - ab)
    torch.testing.assert_close(mean, col(coef1) * x0 + col(coef2) * x_t, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(var, col(tilde), rtol=1e-12, atol=0)
    torch.testing.assert_close(log_var, col(np.log(np.append(tilde[1], tilde[1:]))), rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", [(3, 1, 4, 4), (2, 2, 4, 4), (3, 2, 4, 2), (3, 2, 4)])
def test_a_backbone_output_of_the_wrong_shape_is_named(registry, shape):
    from ddpm_kit.errors import DdpmKitError

    d = make_diffusion(registry, variance="learned")  # needs 2 output channels for 1-channel data
    x_t = torch.zeros(3, 1, 4, 4)
    with pytest.raises(DdpmKitError, match=rf"backbone returned shape \({', '.join(map(str, shape))},?\) for input "
                                           r"\(3, 1, 4, 4\); variance 'learned' needs 2 output channels"):
        d.model_output(lambda x, t: torch.zeros(shape), x_t, torch.zeros(3, dtype=torch.long))
