"""Gaussian helpers against reference numbers and scipy's closed forms."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from ddpm_kit.builtins.decoders import DiscretizedGaussian
from ddpm_kit.gaussian import discretized_gaussian_log_likelihood, normal_kl

t = torch.tensor


def test_normal_kl_reference_value():
    assert normal_kl(t(1.0), t(0.0), t(0.0), t(0.0)).item() == pytest.approx(0.5, abs=1e-12)


def test_normal_kl_matches_closed_form_for_random_gaussians():
    g = torch.Generator().manual_seed(1)
    m1, m2 = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    lv1, lv2 = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    s1, s2 = np.exp(0.5 * lv1.numpy()), np.exp(0.5 * lv2.numpy())
    closed = np.log(s2 / s1) + (s1**2 + (m1.numpy() - m2.numpy()) ** 2) / (2 * s2**2) - 0.5
    np.testing.assert_allclose(normal_kl(m1, lv1, m2, lv2).numpy(), closed, rtol=1e-12)


@pytest.mark.parametrize("x,mean,log_scale,expected", [
    (0.0, 0.0, math.log(1 / 255), -0.382163),
    (1.0, 1.0, math.log(1 / 255), -0.172935),
    (0.0, 0.0, 0.0, -5.767057),
    (1.0, 0.0, 0.0, -1.834095),
])
def test_discretized_loglik_reference_values(x, mean, log_scale, expected):
    """The reference numbers come from the reference code's (hojonathanho/diffusion) tanh approximation of Phi."""
    got = discretized_gaussian_log_likelihood(t([x], dtype=torch.float64), t([mean], dtype=torch.float64),
                                              t([log_scale], dtype=torch.float64), exact_cdf=False)
    assert got.item() == pytest.approx(expected, abs=2e-6)


def test_discretized_loglik_exact_cdf_matches_scipy_bins():
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (200,), generator=g).double() / 127.5 - 1
    log_scale = torch.rand(200, generator=g, dtype=torch.float64) * -4
    mean = x + torch.randn(200, generator=g, dtype=torch.float64) * 2 * log_scale.exp()  # keep p >> 1e-12
    got = discretized_gaussian_log_likelihood(x, mean, log_scale, exact_cdf=True).numpy()
    xs, ms, ss = x.numpy(), mean.numpy(), np.exp(log_scale.numpy())
    hi = np.where(xs > 0.999, np.inf, xs + 1 / 255)
    lo = np.where(xs < -0.999, -np.inf, xs - 1 / 255)
    want = np.log(stats.norm.cdf(hi, ms, ss) - stats.norm.cdf(lo, ms, ss))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_discretized_probabilities_sum_to_one_over_all_bins():
    grid = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, log_scale in [(0.3, -1.0), (-0.9, -3.0), (0.0, 1.0)]:
        logp = discretized_gaussian_log_likelihood(grid, torch.full_like(grid, mean), torch.full_like(grid, log_scale),
                                                   exact_cdf=True)
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("bits", [1, 4, 8, 11, 12, 16])
def test_every_bit_depth_the_recipe_accepts_has_its_edge_bins_at_plus_minus_one_only(bits):
    """For 2^bits grid values on [-1, 1] the bin probabilities are Phi(x + w/2) - Phi(x - w/2), with
    only x = -1 and x = 1 extended to -inf / +inf (scipy), and they sum to 1. A fixed 0.999 edge
    test makes the second bin an edge bin from 11 bits on (-1 + 2/2047 = -0.99902)."""
    decoder = DiscretizedGaussian(bits=bits)
    n = 2**bits - 1
    grid = torch.arange(n + 1, dtype=torch.float64) / n * 2 - 1
    mean, scale = torch.full_like(grid, -0.9999), torch.full_like(grid, math.log(2.0 / n))  # mass near -1
    logp = decoder.log_likelihood(grid, mean, scale)
    xs, w = grid.numpy(), 2.0 / n
    hi = np.append(xs[:-1] + w / 2, np.inf)
    lo = np.append(-np.inf, xs[1:] - w / 2)
    want = stats.norm.cdf(hi, -0.9999, 2.0 / n) - stats.norm.cdf(lo, -0.9999, 2.0 / n)
    np.testing.assert_allclose(logp.exp().numpy()[:4], want[:4], rtol=1e-9, atol=1e-15)
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=(n + 2) * 1e-12)  # empty bins are floored at 1e-12


def test_the_decoders_defaults_are_8_bit_bins_and_the_exact_cdf():
    """DiscretizedGaussian(): bins of width 2/255 on [-1, 1] and the exact normal CDF (scipy)."""
    decoder = DiscretizedGaussian()
    x, mean, log_scale = (torch.tensor([v], dtype=torch.float64) for v in (-0.6 + 2 / 255, -0.59, math.log(0.01)))
    got = decoder.log_likelihood(x, mean, log_scale).item()
    want = math.log(stats.norm.cdf(x.item() + 1 / 255, -0.59, 0.01) - stats.norm.cdf(x.item() - 1 / 255, -0.59, 0.01))
    assert got == pytest.approx(want, rel=1e-9)
