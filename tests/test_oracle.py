"""The analytic Gaussian oracle (BRIEF.md): sampling and the bound against closed forms."""

import math

import pytest
import torch

import oracle
from helpers import make_diffusion
from ddpm_kit.builtins.samplers import sample_ancestral

BRIEF_STD = {"fixed_beta_tilde": 0.19630, "fixed_beta": 0.20093}
BRIEF_BOUND = {"fixed_beta_tilde": 7.457, "fixed_beta": 6.844}


@pytest.mark.parametrize("variance", ["fixed_beta_tilde", "fixed_beta"])
def test_closed_forms_reproduce_the_brief(variance):
    betas = oracle.linear_betas()
    mean, std = oracle.sampled_moments(betas, variance)
    assert mean == pytest.approx(0.1, abs=1e-5)
    assert std == pytest.approx(BRIEF_STD[variance], abs=1e-5)
    bound = oracle.expected_bound(betas, variance)
    assert bound["total"] == pytest.approx(BRIEF_BOUND[variance], abs=2e-3)
    assert bound["L0"] == pytest.approx(2.51, abs=5e-3)
    assert oracle.entropy_bpd() == pytest.approx(6.720, abs=1e-3)


@pytest.mark.parametrize("param", ["eps", "x0", "mu"])
@pytest.mark.parametrize("variance", ["fixed_beta_tilde", "fixed_beta"])
def test_ancestral_sampling_hits_the_closed_form_moments(registry, param, variance):
    d = make_diffusion(registry, parameterization=param, variance=variance)
    model = oracle.EpsOracle(oracle.linear_betas(), param)
    n = 64 * 32 * 32
    x_T = torch.randn(64, 1, 32, 32, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    x = sample_ancestral(d, model, x_T, generator=torch.Generator().manual_seed(12), clip_denoised=False)
    mean, std = oracle.sampled_moments(oracle.linear_betas(), variance)
    # Monte Carlo standard errors of the mean and std of n Gaussian draws
    assert x.mean().item() == pytest.approx(mean, abs=4 * std / math.sqrt(n))
    assert x.std().item() == pytest.approx(std, abs=4 * std / math.sqrt(2 * n))


def test_sampling_distinguishes_the_two_variances(registry):
    """The two fixed variances give stds 2.3% apart; the test above would catch a swap."""
    gap = BRIEF_STD["fixed_beta"] - BRIEF_STD["fixed_beta_tilde"]
    assert gap > 8 * BRIEF_STD["fixed_beta"] / math.sqrt(2 * 64 * 32 * 32)


@pytest.mark.parametrize("param,variance", [("eps", "fixed_beta_tilde"), ("eps", "fixed_beta"),
                                            ("x0", "fixed_beta_tilde"), ("mu", "fixed_beta")])
def test_bound_in_bits_per_dim_matches_closed_form(registry, param, variance):
    d = make_diffusion(registry, parameterization=param, variance=variance)
    model = oracle.EpsOracle(oracle.linear_betas(), param)
    g = torch.Generator().manual_seed(21)
    x0 = oracle.quantize(oracle.M + oracle.S * torch.randn(48, 1, 8, 8, generator=g, dtype=torch.float64))
    out = d.calc_bpd_loop(model, x0, generator=g)
    total = out["total_bpd"]
    expected = oracle.expected_bound(oracle.linear_betas(), variance)
    stderr = total.std().item() / math.sqrt(len(total))
    assert total.mean().item() == pytest.approx(expected["total"], abs=4 * stderr + 1e-3)
    assert out["vb"][:, 0].mean().item() == pytest.approx(expected["L0"], abs=4 * out["vb"][:, 0].std().item() / math.sqrt(48))
    assert out["prior_bpd"].mean().item() == pytest.approx(expected["prior"], rel=0.05)
    assert total.mean().item() > oracle.entropy_bpd() + 0.1  # a fixed variance is not optimal
