"""Improved DDPM's formulas against reference numbers, closed forms and the Gaussian oracle."""

import math

import numpy as np
import pytest
import torch

import oracle
from ddpm_kit.builtins.samplers import sample_ancestral
from ddpm_kit_improved.samplers import respace, sample_ddim


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


def test_hybrid_is_simple_plus_weighted_vlb_and_vlb_trains_only_the_variance(registry, diffusion):
    d = diffusion(variance="learned_range", T=100)
    x0 = torch.rand(4, 1, 4, 4) * 2 - 1
    t, noise = torch.tensor([0, 3, 50, 99]), torch.randn(4, 1, 4, 4)
    output = torch.randn(4, 2, 4, 4, requires_grad=True)
    terms = registry.build("objective", "hybrid", {"vlb_weight": 0.001}).losses(d, lambda x, tt: output, x0, t, noise)
    x_t = d.q_sample(x0, t, noise)
    mse = ((noise - output[:, :1]) ** 2).mean(dim=(1, 2, 3))
    vb = d.vb_terms_bpd_from_output(output, x0, x_t, t)["output"]
    torch.testing.assert_close(terms["loss"], mse + 0.001 * 100 * vb)
    terms["vb"].sum().backward()
    assert output.grad[:, :1].abs().max().item() == 0.0  # stop-gradient on the mean
    assert output.grad[:, 1:].abs().max().item() > 0.0


def test_importance_sampling_probabilities_and_unbiased_weights(registry, diffusion):
    d = diffusion(T=5)
    objective = registry.build("objective", "vlb_importance", {"history": 2, "uniform_prob": 0.0})
    t0, w0 = objective.sample_t(d, 1000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert torch.all(w0 == 1.0)  # uniform until every t has a full history
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    for _ in range(2):
        objective.update(torch.arange(5), losses)
    p = objective.probabilities(5)
    torch.testing.assert_close(p, losses.double() / losses.sum())  # sqrt(E[L^2]) with constant losses
    t, w = objective.sample_t(d, 200_000, torch.device("cpu"), torch.Generator().manual_seed(1))
    estimate = (w.double() * losses.double()[t]).mean().item()
    assert estimate == pytest.approx(losses.mean().item(), rel=0.01)  # E[w L_t] = mean_t L_t


def oracle_samples(d, sampler, param="eps", seed=12, **kw):
    model = oracle.EpsOracle(oracle.linear_betas(), param)
    x_T = torch.randn(64, 1, 32, 32, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    return sampler(d, model, x_T, generator=torch.Generator().manual_seed(seed), clip_denoised=False, **kw)


def test_ddim_eta_1_is_ancestral_sampling_with_beta_tilde(diffusion):
    d = diffusion(variance="fixed_beta_tilde")
    ddim = oracle_samples(d, sample_ddim, eta=1.0)
    ancestral = oracle_samples(d, sample_ancestral)
    torch.testing.assert_close(ddim, ancestral, rtol=1e-6, atol=1e-6)
    _, std = oracle.sampled_moments(oracle.linear_betas(), "fixed_beta_tilde")
    assert ddim.std().item() == pytest.approx(std, abs=4 * std / math.sqrt(2 * ddim.numel()))


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


@pytest.mark.parametrize("steps", [1000, 100])
def test_respaced_ancestral_sampling_matches_the_respaced_closed_form(registry, diffusion, steps):
    d = diffusion()
    sub, timestep_map = respace(d, steps)
    torch.testing.assert_close(sub.alphas_cumprod, d.alphas_cumprod[timestep_map])
    sampler = registry.build("sampler", "respaced", {"steps": steps, "clip_denoised": False})
    model = oracle.EpsOracle(oracle.linear_betas())
    x_T = torch.randn(64, 1, 32, 32, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    x = sampler(d, model, x_T, generator=torch.Generator().manual_seed(3))
    _, std = oracle.sampled_moments(sub.betas.numpy(), "fixed_beta")
    assert x.std().item() == pytest.approx(std, abs=4 * std / math.sqrt(2 * x.numel()))
    if steps == 1000:
        same = sample_ancestral(d, model, x_T, generator=torch.Generator().manual_seed(3), clip_denoised=False)
        torch.testing.assert_close(x, same)
