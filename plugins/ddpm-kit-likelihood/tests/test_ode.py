"""The probability-flow ODE likelihood against the Gaussian oracle: for data N(m, s^2) per pixel the
exact eps* at any noise level is known (ddpm_kit.testing.oracle), the ODE's marginal at s = 0 is the forward
marginal N(sqrt(abar_0) m, abar_0 s^2 + 1 - abar_0), and log p_0(x) is its closed-form density."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.interpolate import CubicSpline

from ddpm_kit.api import get_registry
from ddpm_kit_likelihood import bits_per_dim, dequantize, ode_log_likelihood
from ddpm_kit.testing import diffusion as make_diffusion
from ddpm_kit.testing import statistical_seed as test_seed
from ddpm_kit.testing.oracle import M, S, linear_betas

T = 1000
LOG_AB = np.log(np.cumprod(1 - linear_betas(T)))
SPLINE = CubicSpline(np.arange(T), LOG_AB)


class ContinuousOracle(torch.nn.Module):
    """eps*(x, s) (or x0*) at real s, with log alpha-bar the cubic spline through the timesteps
    (the convention the ODE states), written here from the closed form."""

    def __init__(self, param: str = "eps") -> None:
        super().__init__()
        self.param = param

    def forward(self, x, s):
        ab = float(np.exp(SPLINE(float(s[0]))))
        eps = math.sqrt(1 - ab) * (x - math.sqrt(ab) * M) / (ab * S**2 + 1 - ab)
        return eps if self.param == "eps" else (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)


def diffusion(param: str = "eps"):
    return make_diffusion(get_registry(entry_points=False), parameterization=param, T=T)


def closed_form_log_p(x: torch.Tensor) -> np.ndarray:
    """log N(x; sqrt(abar_0) m, abar_0 s^2 + 1 - abar_0) summed over each row's pixels (nats)."""
    ab0 = math.exp(LOG_AB[0])
    return stats.norm.logpdf(x.flatten(1).numpy(), math.sqrt(ab0) * M, math.sqrt(ab0 * S**2 + 1 - ab0)).sum(1)


def prior_mismatch(end: torch.Tensor) -> np.ndarray:
    """log q_T(x_T) - log N(x_T; 0, I) at the path's end: what the prior N(0, I) costs against the
    true marginal N(sqrt(abar_T) m, abar_T s^2 + 1 - abar_T) (|.| ~ 1e-3 nats for 4 pixels)."""
    abT, y = math.exp(LOG_AB[-1]), end.flatten(1).numpy()
    true = stats.norm.logpdf(y, math.sqrt(abT) * M, math.sqrt(abT * S**2 + 1 - abT)).sum(1)
    return true - stats.norm.logpdf(y).sum(1)


def gaussian_images(n: int, seed: int, size: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return M + S * torch.randn(n, 1, size, size, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("param", ["eps", "x0"])
def test_with_an_exact_trace_the_ode_likelihood_is_the_closed_form_density(param):
    """Exact divergence (autograd per dimension): log p_0 of every image, with the prior's known
    mismatch taken out, equals the closed form within the solver's tolerance (rtol = atol = 1e-5:
    errors of ~1e-4 nats accumulate over the path; the residual does not shrink with a tighter tolerance unless it is the solver's)."""
    x = gaussian_images(8, test_seed(3))
    out = ode_log_likelihood(diffusion(param), ContinuousOracle(param), x, trace="exact")
    np.testing.assert_allclose(out.log_p.numpy() + prior_mismatch(out.end), closed_form_log_p(x), atol=5e-4)
    assert 10 < out.nfe < 200  # an adaptive solve, not one step; no kinks in time to crawl through


@pytest.mark.statistical
def test_hutchinson_estimates_are_unbiased_within_their_standard_error():
    """Gaussian probes z: the oracle's Jacobian is c(s) I, so z^T J z = c |z|^2 has variance
    2 c^2 D per evaluation: each image's estimate is off by a random amount, and their mean error
    over 256 images is within 4.5 of its standard errors (a correct estimator fails with
    probability 7e-6). Rademacher probes (|z|^2 = D exactly) make the same estimate exact."""
    seed = test_seed(5)
    x = gaussian_images(256, seed)
    probes = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=x.dtype)
    d, model, want = diffusion(), ContinuousOracle(), closed_form_log_p(x)
    out = ode_log_likelihood(d, model, x, probes=probes)
    error = out.log_p.numpy() + prior_mismatch(out.end) - want
    assert error.std() > 0.05  # the probes do matter
    assert abs(error.mean()) < 4.5 * error.std(ddof=1) / math.sqrt(len(error))
    exact = ode_log_likelihood(d, model, x[:16], probes=probes[:16].sign())
    np.testing.assert_allclose(exact.log_p.numpy() + prior_mismatch(exact.end), want[:16], atol=5e-4)


def test_dequantized_bits_per_dim_of_gaussian_data():
    """bits/dim of dequantized N(m, s^2) pixels against the closed form: -E log2 p(x) / D + 7."""
    seed = test_seed(7)
    g = torch.Generator().manual_seed(seed)
    pixels = torch.round(((M + S * torch.randn(64, 1, 2, 2, generator=g, dtype=torch.float64)).clamp(-1, 1) + 1) * 127.5)
    x = dequantize(pixels / 127.5 - 1, torch.randn(pixels.shape, generator=g, dtype=torch.float64))
    assert bool(((x >= -1) & (x < 1)).all()) and bool((torch.floor((x + 1) * 128) == pixels).all())
    out = ode_log_likelihood(diffusion(), ContinuousOracle(), x, trace="exact")
    want = -closed_form_log_p(x) / (4 * math.log(2)) + 7
    np.testing.assert_allclose(bits_per_dim(out.log_p.numpy() + prior_mismatch(out.end), 4), want, atol=5e-4)


@pytest.mark.slow
def test_bpd_ode_on_a_conditional_run_gives_each_image_and_probe_its_own_label(tmp_path, monkeypatch):
    """`ddpm-kit evaluate RUN --metric bpd_ode` on the tiny recipe made class-conditional: every
    network call inside the solver sees the labels of its batch's images, probe after probe
    (the images are stacked probe-major, as the bound's labels repeat), and autograd runs on them."""
    import json

    from ddpm_kit.builtins.backbones import UNetBackbone
    from ddpm_kit.testing import TINY, cli

    recipe = tmp_path / "c.toml"
    recipe.write_text(TINY.read_text() + "\n[conditioning]\nnum_classes = 10\nlabel_dropout = 0.25\n")
    run = tmp_path / "run"
    assert cli("run", str(recipe), "--run-dir", str(run), "--set", "train.steps=2", "--no-sample", "--no-eval").returncode == 0
    calls, forward = [], UNetBackbone.forward

    def recording(self, x, t, class_labels=None):
        calls.append(class_labels.clone())
        return forward(self, x, t, class_labels)

    monkeypatch.setattr(UNetBackbone, "forward", recording)
    result = cli("evaluate", str(run), "--metric", "bpd_ode", "--param", "limit=4", "--param", "batch_size=2",
                 "--param", "rtol=1e-2", "--param", "atol=1e-2")
    assert result.returncode == 0, result.stderr
    from ddpm_kit.builtins.datasets import digits

    y = digits()["test"]["label"][:4]  # the tiny recipe's data: the digits plugin's test split
    figures = json.loads((run / "eval" / "bpd_ode_limit4_batch_size2_rtol0.01_atol0.01.json").read_text())
    assert figures["bpd_ode_images"] == 4 and len(calls) > 4
    # one label pattern per batch of 2 images, its probes stacked: [y0, y1, y0, y1], then [y2, y3, y2, y3]
    assert {tuple(c.tolist()) for c in calls} == {(y[0], y[1], y[0], y[1]), (y[2], y[3], y[2], y[3])}
