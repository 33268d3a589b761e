"""Objectives against the Gaussian oracle's closed forms."""

import math

import numpy as np
import pytest
import torch

import oracle
from helpers import make_diffusion
from ddpm_kit.errors import DdpmKitError


def gaussian_batch(n=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    return oracle.M + oracle.S * torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64), g


@pytest.mark.parametrize("index", [1, 100, 500, 999])
def test_simple_loss_of_the_optimal_predictor_is_the_posterior_variance_of_eps(registry, index):
    """E||eps - eps*||^2 = Var(eps | x_t) = ab s^2 / (ab s^2 + 1 - ab) for Gaussian data."""
    d = make_diffusion(registry)
    x0, g = gaussian_batch()
    t = torch.full((len(x0),), index)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    loss = registry.build("objective", "simple").losses(d, oracle.EpsOracle(oracle.linear_betas()), x0, t, noise)["loss"]
    ab = np.cumprod(1 - oracle.linear_betas())[index]
    expected = ab * oracle.S**2 / (ab * oracle.S**2 + 1 - ab)
    assert loss.mean().item() == pytest.approx(expected, rel=4 * math.sqrt(2 / (16 * len(x0))))


@pytest.mark.parametrize("index", [1, 300, 998])
def test_vlb_objective_is_the_bound_term_at_t(registry, index):
    d = make_diffusion(registry, variance="fixed_beta_tilde")
    x0, g = gaussian_batch(2048, seed=index)
    t = torch.full((len(x0),), index)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    vb = registry.build("objective", "vlb").losses(d, oracle.EpsOracle(oracle.linear_betas()), x0, t, noise)["loss"]
    # closed form of the KL term: sigma^2 = beta-tilde, so only the mean term remains
    b = oracle.linear_betas()
    ab = np.cumprod(1 - b)
    ab_prev = np.append(1, ab[:-1])
    c1 = b[index] * np.sqrt(ab_prev[index]) / (1 - ab[index])
    tilde = b[index] * (1 - ab_prev[index]) / (1 - ab[index])
    var_x0 = oracle.S**2 * (1 - ab[index]) / (ab[index] * oracle.S**2 + 1 - ab[index])
    expected = 0.5 * c1**2 * var_x0 / tilde / math.log(2)
    assert vb.mean().item() == pytest.approx(expected, rel=0.05)


def test_simple_objective_refuses_a_learned_variance(registry):
    d = make_diffusion(registry, variance="learned")
    with pytest.raises(DdpmKitError, match="objective 'simple' cannot train variance 'learned'"):
        registry.build("objective", "simple").check(d)
    registry.build("objective", "vlb").check(d)  # the bound trains it


def test_vlb_trains_a_learned_variance_towards_beta_tilde(registry):
    """With the oracle mean and a free log-variance per timestep, minimising the bound term
    drives sigma_t^2 to beta-tilde_t + c1^2 Var(x0|x_t) (the KL-optimal variance)."""
    T = 20
    d = make_diffusion(registry, variance="learned", T=T)
    betas = d.betas.numpy()
    mean_model = oracle.EpsOracle(betas)
    log_var = torch.nn.Parameter(torch.zeros(T, dtype=torch.float64))

    def model(x, t):
        return torch.cat([mean_model(x, t), log_var[t].view(-1, 1, 1, 1).expand_as(x)], dim=1)

    opt = torch.optim.Adam([log_var], lr=0.05)
    objective = registry.build("objective", "vlb")
    x0, g = gaussian_batch(512, seed=5)
    for _ in range(400):
        t = torch.randint(1, T, (len(x0),), generator=g)
        loss = objective.losses(d, model, x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))["loss"]
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    ab = np.cumprod(1 - betas)
    ab_prev = np.append(1, ab[:-1])
    c1 = betas * np.sqrt(ab_prev) / (1 - ab)
    tilde = betas * (1 - ab_prev) / (1 - ab)
    var_x0 = oracle.S**2 * (1 - ab) / (ab * oracle.S**2 + 1 - ab)
    optimal = np.log(tilde + c1**2 * var_x0)
    np.testing.assert_allclose(log_var.detach().numpy()[5:], optimal[5:], atol=0.1)
