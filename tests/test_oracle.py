"""The analytic Gaussian oracle (ddpm_kit.testing.oracle): its closed forms against the reference figures, and the bound
(calc_bpd_loop) against them. (Sampling against the oracle: tests/test_samplers.py.)"""

import math

import numpy as np
import pytest
import torch

from ddpm_kit.testing import oracle
from helpers import make_diffusion, test_seed
from ddpm_kit.testing.oracle import REFERENCE_BOUND, REFERENCE_STD
@pytest.mark.parametrize("variance", ["fixed_beta_tilde", "fixed_beta"])
def test_closed_forms_reproduce_the_reference_figures(variance):
    betas = oracle.linear_betas()
    mean, std = oracle.sampled_moments(betas, variance)
    assert mean == pytest.approx(0.1, abs=1e-5)
    assert std == pytest.approx(REFERENCE_STD[variance], abs=1e-5)
    bound = oracle.expected_bound(betas, variance)
    assert bound["total"] == pytest.approx(REFERENCE_BOUND[variance], abs=2e-3)
    assert bound["L0"] == pytest.approx(2.51, abs=5e-3)
    assert oracle.entropy_bpd() == pytest.approx(6.720, abs=1e-3)


@pytest.mark.parametrize("param,variance", [("eps", "fixed_beta_tilde"), ("eps", "fixed_beta"),
                                            ("x0", "fixed_beta_tilde"), ("mu", "fixed_beta")])
def test_every_bound_term_equals_the_oracles_estimator_on_the_same_noise(registry, param, variance):
    """calc_bpd_loop's per-image terms L_0..L_{T-1}, L_T against the same single-sample estimator
    written in numpy from eqs. 4-7 and 11 (ddpm_kit.testing.oracle), fed the same x0 and noise: no Monte-
    Carlo error, so any seed passes and a missing or mis-weighted term anywhere in t fails."""
    d = make_diffusion(registry, parameterization=param, variance=variance)
    model = oracle.EpsOracle(oracle.linear_betas(), param)
    seed = test_seed(21)
    g = torch.Generator().manual_seed(seed)
    x0 = oracle.quantize(oracle.M + oracle.S * torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64))
    out = d.calc_bpd_loop(model, x0, generator=torch.Generator().manual_seed(seed + 1), timesteps_per_batch=7)
    g = torch.Generator().manual_seed(seed + 1)  # the loop draws eps for t = T-1 first, down to t = 0
    eps = torch.stack([torch.randn(x0.shape, generator=g, dtype=x0.dtype) for _ in range(1000)]).flip(0)
    expected = oracle.sampled_bound_terms(oracle.linear_betas(), variance, x0.flatten(1).numpy(),
                                          eps.flatten(2).numpy())
    got = torch.cat([out["vb"], out["prior_bpd"][:, None]], 1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(out["total_bpd"].numpy(), expected.sum(1), rtol=1e-9)


@pytest.mark.slow  # about 3.5 s each: 1,000 terms over 400 images of 500 pixels
@pytest.mark.statistical
@pytest.mark.parametrize("variance", ["fixed_beta_tilde", "fixed_beta"])
def test_the_estimators_mean_is_the_closed_form_bound(variance):
    """The estimator above, averaged over 400 images of 500 pixels, against the closed-form
    expectation (the reference 7.457 / 6.844 bits/dim); tolerance 4.5 standard errors of the image
    mean (about 0.02 bits/dim; a correct estimator fails with probability 7e-6 per figure). With
    sigma^2 = beta the bound stays above the data's entropy (6.720) by 0.124; the
    estimate exceeds entropy + 0.1 unless it is 5 standard errors low (probability 3e-7)."""
    rng = np.random.default_rng(test_seed(31))
    x0 = oracle.quantize(torch.from_numpy(oracle.M + oracle.S * rng.standard_normal((400, 500)))).numpy()
    terms = oracle.sampled_bound_terms(oracle.linear_betas(), variance, x0, lambda t: rng.standard_normal(x0.shape))
    expected = oracle.expected_bound(oracle.linear_betas(), variance)
    for got, want in ((terms.sum(1), expected["total"]), (terms[:, 0], expected["L0"]),
                      (terms[:, 1:-1].sum(1), expected["kl"]), (terms[:, -1], expected["prior"])):
        stderr = got.std(ddof=1) / math.sqrt(len(got))
        assert got.mean() == pytest.approx(want, abs=4.5 * stderr)
    if variance == "fixed_beta":  # 0.124 above the entropy: 0.1 leaves 5 standard errors (~0.0048)
        assert terms.sum(1).mean() > oracle.entropy_bpd() + 0.1
