"""Improved DDPM's formulas against reference numbers, closed forms and the Gaussian oracle."""

import math

import numpy as np
import pytest
import torch

from ddpm_kit.testing import oracle
from ddpm_kit.api import respace
from ddpm_kit_improved.samplers import sample_ddim
from ddpm_kit.testing import ancestral_samples
from ddpm_kit.testing import statistical_seed as test_seed


def test_cosine_schedule_reference_value_and_closed_form(registry):
    betas = registry.build("schedule", "cosine", {"T": 1000}).betas
    assert betas[0].item() == pytest.approx(4.128e-5, rel=1e-3)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    ab = torch.cumprod(1 - betas, 0)
    for t in (0, 10, 500, 900):
        assert ab[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert betas.max().item() == pytest.approx(0.999)  # clipped at the end


def test_learned_range_interpolates_log_beta_and_log_beta_tilde(diffusion):
    d = diffusion(variance="learned_range")
    assert d.output_channels(3) == 6
    x = torch.zeros(3, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([0, 5, 999])
    lo, hi = d.posterior_log_variance_clipped[t], d.betas[t].log()
    for v, expected in ((-1.0, lo), (1.0, hi), (0.0, (lo + hi) / 2)):
        out = torch.cat([x, torch.full_like(x, v)], dim=1)
        got = d.p_mean_variance_from_output(out, x, t).log_variance[:, 0, 0, 0]
        torch.testing.assert_close(got, expected)


def improved_diffusion_hybrid_loss(betas, x0, t, noise, output, vlb_weight):
    """improved-diffusion's training_losses for learned_range + RESCALED_MSE, written out in numpy:
    mse(eps, eps-hat) + vlb_weight * T * L_t, L_t the KL to the true posterior (t > 0) or the
    decoder NLL (t = 0) in bits/dim, the variance interpolated as frac log beta + (1 - frac) log
    beta-tilde (clipped at t = 0)."""
    T = len(betas)
    ab = np.cumprod(1 - betas)
    ab_prev = np.append(1.0, ab[:-1])
    tilde = betas * (1 - ab_prev) / (1 - ab)
    log_tilde = np.log(np.append(tilde[1], tilde[1:]))
    coef1, coef2 = betas * np.sqrt(ab_prev) / (1 - ab), (1 - ab_prev) * np.sqrt(1 - betas) / (1 - ab)
    col = (lambda v: v[t].reshape(-1, 1, 1, 1))
    x_t = np.sqrt(col(ab)) * x0 + np.sqrt(1 - col(ab)) * noise
    eps_hat, v = output[:, :1], output[:, 1:]
    frac = (v + 1) / 2
    model_log_var = frac * np.log(col(betas)) + (1 - frac) * col(log_tilde)
    pred_x0 = np.sqrt(1 / col(ab)) * x_t - np.sqrt(1 / col(ab) - 1) * eps_hat
    model_mean = col(coef1) * pred_x0 + col(coef2) * x_t
    true_mean, true_log_var = col(coef1) * x0 + col(coef2) * x_t, col(log_tilde)
    kl = 0.5 * (-1 + model_log_var - true_log_var + np.exp(true_log_var - model_log_var)
                + (true_mean - model_mean) ** 2 * np.exp(-model_log_var))
    nll = -oracle._discretized_loglik(x0, model_mean, 0.5 * model_log_var, exact=True)
    vb = np.where(t == 0, nll.mean(axis=(1, 2, 3)), kl.mean(axis=(1, 2, 3))) / np.log(2)
    mse = ((noise - eps_hat) ** 2).mean(axis=(1, 2, 3))
    return mse + vlb_weight * T * vb


def test_hybrid_is_improved_diffusions_loss_and_its_vlb_trains_only_the_variance(registry, diffusion):
    d = diffusion(variance="learned_range", T=100)
    betas = np.linspace(1e-4, 0.02, 100)
    np.testing.assert_allclose(d.betas.numpy(), betas, rtol=1e-12)
    g = torch.Generator().manual_seed(0)
    x0 = oracle.quantize(torch.rand(4, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1)
    t, noise = torch.tensor([0, 3, 50, 99]), torch.randn(4, 1, 4, 4, generator=g, dtype=torch.float64)
    output = torch.randn(4, 2, 4, 4, generator=g, dtype=torch.float64).requires_grad_()
    terms = registry.build("objective", "hybrid", {"vlb_weight": 0.001}).losses(d, lambda x, tt: output, x0, t, noise)
    expected = improved_diffusion_hybrid_loss(betas, x0.numpy(), t.numpy(), noise.numpy(), output.detach().numpy(),
                                              0.001)
    np.testing.assert_allclose(terms["loss"].detach().numpy(), expected, rtol=1e-9)
    terms["vb"].sum().backward()
    assert output.grad[:, :1].abs().max().item() == 0.0  # stop-gradient on the mean
    assert output.grad[:, 1:].abs().max().item() > 0.0


def test_importance_sampling_follows_eq_18_over_a_sliding_history(registry, diffusion):
    """p_t proportional to sqrt(mean of the last `history` L_t^2) (Improved DDPM eq. 18), mixed with
    uniform_prob / T; uniform until every t has a full history. Hand-computed for T = 3, history 2,
    after three updates, so the window has shifted past the first losses."""
    d = diffusion(T=3)
    objective = registry.build("objective", "vlb_importance", {"history": 2, "uniform_prob": 0.1})
    _, w0 = objective.sample_t(d, 100, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert torch.all(w0 == 1.0)  # no history yet: uniform, weight 1
    for losses in ([100.0, 100.0, 100.0], [3.0, 1.0, 0.0], [4.0, 1.0, 2.0]):  # the 100s fall out of the window
        objective.update(torch.arange(3), torch.tensor(losses))
    rms = np.sqrt(np.array([(9 + 16) / 2, (1 + 1) / 2, (0 + 4) / 2]))  # 3.5355, 1, 1.4142
    expected = 0.9 * rms / rms.sum() + 0.1 / 3
    np.testing.assert_allclose(objective.probabilities(3).numpy(), expected, rtol=1e-12)


@pytest.mark.statistical
def test_importance_weights_keep_the_vlb_estimate_unbiased(registry, diffusion):
    """E[w_t L_t] with t ~ p and w = 1 / (T p_t) is the uniform mean of L_t. 200,000 draws; the
    tolerance is 4.5 standard errors of the weighted sample mean (stated by the data, ~0.3%)."""
    d = diffusion(T=5)
    objective = registry.build("objective", "vlb_importance", {"history": 2, "uniform_prob": 0.001})
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0, 50.0], dtype=torch.float64)
    for scale in (1.0, 1.5):
        objective.update(torch.arange(5), losses * scale)
    t, w = objective.sample_t(d, 200_000, torch.device("cpu"), torch.Generator().manual_seed(test_seed(1)))
    values = w.double() * (losses * 1.5)[t]
    stderr = values.std().item() / math.sqrt(len(values))
    assert values.mean().item() == pytest.approx((losses * 1.5).mean().item(), abs=4.5 * stderr)
    assert np.bincount(t.numpy(), minlength=5)[4] > 100_000  # it did sample the large-loss step more


def oracle_samples(d, sampler, param="eps", seed=12, **kw):
    """65,536 pixels sampled with the exact eps*; x_T seeded by $DDPM_KIT_TEST_SEED."""
    model = oracle.EpsOracle(oracle.linear_betas(), param)
    x_T = torch.randn(64, 1, 32, 32, generator=torch.Generator().manual_seed(test_seed(11)), dtype=torch.float64)
    return sampler(d, model, x_T, generator=torch.Generator().manual_seed(test_seed(seed)), clip_denoised=False, **kw)


@pytest.mark.slow  # about 3 s: two 1,000-step chains over 64 images of 32x32
@pytest.mark.statistical
def test_ddim_eta_1_is_ancestral_sampling_with_beta_tilde(diffusion):
    d = diffusion(variance="fixed_beta_tilde")
    ddim = oracle_samples(d, sample_ddim, eta=1.0)
    ancestral = ancestral_samples("eps", "fixed_beta_tilde", test_seed(11))  # the same noise (seeds 11, 12)
    torch.testing.assert_close(ddim, ancestral, rtol=1e-6, atol=1e-6)
    _, std = oracle.sampled_moments(oracle.linear_betas(), "fixed_beta_tilde")
    assert ddim.std().item() == pytest.approx(std, abs=4 * std / math.sqrt(2 * ddim.numel()))


@pytest.mark.statistical
def test_ddim_eta_0_is_deterministic_and_hits_its_closed_form(diffusion):
    d = diffusion()
    a, b = oracle_samples(d, sample_ddim, seed=1), oracle_samples(d, sample_ddim, seed=2)
    assert torch.equal(a, b)
    # closed form: each deterministic step is affine, x <- sqrt(ab') x0(x) + sqrt(1-ab') eps(x)
    betas = oracle.linear_betas()
    ab = np.cumprod(1 - betas)
    ab_prev = np.append(1.0, ab[:-1])
    s2, m = oracle.S**2, oracle.M
    mean, var = 0.0, 1.0
    for t in reversed(range(1000)):
        g = np.sqrt(ab[t]) * s2 / (ab[t] * s2 + 1 - ab[t])
        a_x0, b_x0 = g, m - g * np.sqrt(ab[t]) * m
        a_eps = (1 - np.sqrt(ab[t]) * a_x0) / np.sqrt(1 - ab[t])
        b_eps = -np.sqrt(ab[t]) * b_x0 / np.sqrt(1 - ab[t])
        A = np.sqrt(ab_prev[t]) * a_x0 + np.sqrt(1 - ab_prev[t]) * a_eps
        B = np.sqrt(ab_prev[t]) * b_x0 + np.sqrt(1 - ab_prev[t]) * b_eps
        mean, var = A * mean + B, A**2 * var
    assert a.mean().item() == pytest.approx(mean, abs=4 * math.sqrt(var / a.numel()))
    assert a.std().item() == pytest.approx(math.sqrt(var), rel=4 / math.sqrt(2 * a.numel()))
    assert math.sqrt(var) == pytest.approx(oracle.S, rel=0.02)  # the probability-flow map is nearly exact


@pytest.mark.statistical
@pytest.mark.parametrize("steps", [100, 37])
def test_respaced_ancestral_sampling_matches_the_respaced_closed_form(registry, diffusion, steps):
    """Improved DDPM's respacing from first principles: keep round(i (T - 1) / (K - 1)), i < K, and
    set beta_i = 1 - ab[keep_i] / ab[keep_{i-1}]; the oracle's closed-form moments over those betas
    (std within 4 standard errors of 65,536 pixels, 0.00055)."""
    d = diffusion()
    keep = sorted({round(i * 999 / (steps - 1)) for i in range(steps)})
    ab = np.cumprod(1 - oracle.linear_betas())[keep]
    betas = 1 - ab / np.append(1.0, ab[:-1])
    sub, timestep_map = respace(d, steps)
    assert timestep_map.tolist() == keep and len(keep) == steps
    np.testing.assert_allclose(sub.betas.numpy(), betas, rtol=1e-10)
    sampler = registry.build("sampler", "respaced", {"steps": steps, "clip_denoised": False})
    model = oracle.EpsOracle(oracle.linear_betas())
    seed = test_seed(11)
    x_T = torch.randn(64, 1, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = sampler(d, model, x_T, generator=torch.Generator().manual_seed(seed + 1))
    mean, std = oracle.sampled_moments(betas, "fixed_beta")
    assert x.mean().item() == pytest.approx(mean, abs=4 * std / math.sqrt(x.numel()))
    assert x.std().item() == pytest.approx(std, abs=4 * std / math.sqrt(2 * x.numel()))


@pytest.mark.statistical
def test_respaced_sampling_with_beta_tilde_on_a_beta_run_is_ddim_eta_1_and_hits_its_closed_form(registry, diffusion):
    """``variance = "fixed_beta_tilde"`` on a run trained with sigma^2 = beta: the respaced chain
    with its own posterior variance, which DDIM with eta = 1 is too (a second code path, same
    noise, to 1e-6), and whose samples have the closed-form std over the respaced betas (within 4
    standard errors of 65,536 pixels)."""
    d, steps = diffusion(), 37
    assert d.variance.name == "fixed_beta"
    respaced = registry.build("sampler", "respaced", {"steps": steps, "clip_denoised": False,
                                                      "variance": "fixed_beta_tilde"}, diffusion=d)
    ddim = registry.build("sampler", "ddim", {"steps": steps, "eta": 1.0, "clip_denoised": False})
    model, seed = oracle.EpsOracle(oracle.linear_betas()), test_seed(13)
    x_T = torch.randn(64, 1, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = respaced(d, model, x_T, generator=torch.Generator().manual_seed(seed + 1))
    torch.testing.assert_close(x, ddim(d, model, x_T, generator=torch.Generator().manual_seed(seed + 1)),
                               rtol=1e-6, atol=1e-6)
    ab = np.cumprod(1 - oracle.linear_betas())[respace(d, steps)[1].numpy()]
    mean, std = oracle.sampled_moments(1 - ab / np.append(1.0, ab[:-1]), "fixed_beta_tilde")
    assert x.std().item() == pytest.approx(std, abs=4 * std / math.sqrt(2 * x.numel()))
    assert x.mean().item() == pytest.approx(mean, abs=4 * std / math.sqrt(x.numel()))
