"""eps / x0 / mu parameterizations: round trips and agreement with each other."""

import numpy as np
import pytest
import torch

from helpers import make_diffusion

PARAMS = ["eps", "x0", "mu"]


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    return x0, noise, t


def paper_quantities(x0, noise, t):
    """x_t (eq. 4) and the true posterior mean (eq. 7) for the linear schedule, in float64 numpy."""
    betas = np.linspace(1e-4, 0.02, 1000)
    ab = np.cumprod(1 - betas)
    ab_prev = np.append(1.0, ab[:-1])
    b, a_t, a_p = (v[t.numpy()].reshape(-1, 1, 1, 1) for v in (betas, ab, ab_prev))
    x_t = np.sqrt(a_t) * x0.numpy() + np.sqrt(1 - a_t) * noise.numpy()
    mean = np.sqrt(a_p) * b / (1 - a_t) * x0.numpy() + np.sqrt(1 - b) * (1 - a_p) / (1 - a_t) * x_t
    return torch.from_numpy(x_t), torch.from_numpy(mean)


@pytest.mark.parametrize("name", PARAMS)
def test_perfect_prediction_recovers_x0_eps_and_true_posterior(registry, batch, name):
    """The output a perfect network gives (the L_simple target: eps, x0 or the posterior mean,
    from eqs. 4 and 7 written out in numpy) recovers x0, eps and the true posterior mean."""
    d = make_diffusion(registry, parameterization=name)
    x0, noise, t = batch
    x_t, true_mean = paper_quantities(x0, noise, t)
    torch.testing.assert_close(d.q_sample(x0, t, noise), x_t, rtol=1e-12, atol=1e-12)
    p = d.parameterization
    perfect = {"eps": noise, "x0": x0, "mu": true_mean}[name]
    torch.testing.assert_close(p.target(d, x0, x_t, t, noise), perfect, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(p.from_x0(d, x0, x_t, t), perfect, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(p.predict_x0(d, perfect, x_t, t), x0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(p.predict_eps(d, perfect, x_t, t)[t > 0], noise[t > 0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(p.predict_mean(d, perfect, x_t, t, x0), true_mean, rtol=1e-9, atol=1e-9)


def test_eps_target_is_the_noise_and_posterior_mean_is_eq_11(registry, batch):
    """mu_theta = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps)  (eq. 11)."""
    d = make_diffusion(registry, parameterization="eps")
    x0, noise, t = batch
    x_t = d.q_sample(x0, t, noise)
    eps = torch.randn_like(x_t)
    p = d.p_mean_variance_from_output(eps, x_t, t)
    a, b, ab = (d.alphas[t].view(-1, 1, 1, 1), d.betas[t].view(-1, 1, 1, 1), d.alphas_cumprod[t].view(-1, 1, 1, 1))
    torch.testing.assert_close(p.mean, (x_t - b / (1 - ab).sqrt() * eps) / a.sqrt(), rtol=1e-9, atol=1e-9)
    assert torch.equal(d.parameterization.target(d, x0, x_t, t, noise), noise)


@pytest.mark.parametrize("src,dst", [("eps", "x0"), ("eps", "mu"), ("x0", "mu")])
def test_equivalent_outputs_give_identical_reverse_steps(registry, batch, src, dst):
    """An arbitrary network output converted between parameterizations gives the same p(x_{t-1}|x_t)."""
    x0, noise, t = batch
    da, db = make_diffusion(registry, parameterization=src), make_diffusion(registry, parameterization=dst)
    x_t = da.q_sample(x0, t, noise)
    out_a = torch.randn_like(x_t)
    x0_hat = da.parameterization.predict_x0(da, out_a, x_t, t)
    out_b = db.parameterization.from_x0(db, x0_hat, x_t, t)
    pa, pb = da.p_mean_variance_from_output(out_a, x_t, t), db.p_mean_variance_from_output(out_b, x_t, t)
    torch.testing.assert_close(pa.mean, pb.mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(pa.pred_x0, pb.pred_x0, rtol=1e-6, atol=1e-6)


def test_clipping_limits_x0_hat(registry, batch):
    d = make_diffusion(registry, parameterization="x0")
    x0, noise, t = batch
    x_t = d.q_sample(x0, t, noise)
    p = d.p_mean_variance_from_output(3 * torch.ones_like(x_t), x_t, t, clip_denoised=True)
    assert p.pred_x0.max().item() == 1.0
    torch.testing.assert_close(p.mean, d.q_posterior_mean(torch.ones_like(x_t), x_t, t))


def test_variance_choices_log_variance(registry):
    d_beta = make_diffusion(registry, variance="fixed_beta")
    d_tilde = make_diffusion(registry, variance="fixed_beta_tilde")
    x = torch.zeros(3, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([0, 1, 999])
    lb = d_beta.p_mean_variance_from_output(x, x, t).log_variance[:, 0, 0, 0]
    lt = d_tilde.p_mean_variance_from_output(x, x, t).log_variance[:, 0, 0, 0]
    bt1 = d_beta.posterior_variance[1].item()
    torch.testing.assert_close(lb, torch.tensor([bt1, d_beta.betas[1].item(), 0.02], dtype=torch.float64).log())
    torch.testing.assert_close(lt, torch.tensor([bt1, bt1, d_beta.posterior_variance[999].item()],
                                                dtype=torch.float64).log())


def test_learned_variance_uses_extra_channels_and_rejects_wrong_width(registry):
    from ddpm_kit.errors import DdpmKitError

    d = make_diffusion(registry, variance="learned")
    assert d.output_channels(3) == 6
    x = torch.zeros(2, 3, 4, 4)
    t = torch.tensor([5, 6])
    out = torch.cat([torch.zeros_like(x), torch.full_like(x, -3.0)], dim=1)
    p = d.p_mean_variance(lambda x_, t_: out, x, t)
    assert torch.equal(p.log_variance, torch.full_like(x, -3.0))
    with pytest.raises(DdpmKitError, match="variance 'learned' needs 6 output channels for 3-channel data"):
        d.p_mean_variance(lambda x_, t_: torch.zeros_like(x), x, t)
