"""The reverse step against diffusers' DDPMScheduler.step on identical inputs and noise."""

import pytest
import torch
from diffusers import DDPMScheduler

from helpers import make_diffusion
from ddpm_kit.builtins.samplers import sample_ancestral

CASES = [(p, v) for p in ("eps", "x0") for v in ("fixed_beta", "fixed_beta_tilde")]
DIFFUSERS = {"eps": "epsilon", "x0": "sample", "fixed_beta": "fixed_large", "fixed_beta_tilde": "fixed_small"}


def scheduler(param, variance, T, clip, float64=False):
    s = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                      prediction_type=DIFFUSERS[param], variance_type=DIFFUSERS[variance], clip_sample=clip)
    s.set_timesteps(T)
    if float64:
        # diffusers keeps its schedule in float32, where 1 - abar_1 ~ 3e-4 has a relative rounding error
        # of ~2e-4 (mean differences up to 2e-4). Its own formulas on float64 tables compare the math.
        s.betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
        s.alphas = 1.0 - s.betas
        s.alphas_cumprod = torch.cumprod(s.alphas, 0)
        s.one = torch.tensor(1.0, dtype=torch.float64)
    return s


@pytest.mark.parametrize("param,variance", CASES)
@pytest.mark.parametrize("clip", [False, True])
def test_step_mean_and_variance_match_diffusers(registry, param, variance, clip):
    T = 1000
    d = make_diffusion(registry, parameterization=param, variance=variance, T=T)
    s = scheduler(param, variance, T, clip, float64=True)
    g = torch.Generator().manual_seed(3)
    for i in [0, 1, 2, 50, 500, 998, 999]:
        x_t = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
        output = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
        t = torch.full((4,), i, dtype=torch.long)
        p = d.p_mean_variance_from_output(output, x_t, t, clip_denoised=clip)
        noise_seed = 100 + i
        theirs = s.step(output, i, x_t, generator=torch.Generator().manual_seed(noise_seed)).prev_sample
        if i > 0:
            noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(noise_seed), dtype=torch.float64)
            their_var = s._get_variance(i)
            torch.testing.assert_close(p.variance[:, :1, :1, :1].flatten(), their_var.expand(4), rtol=1e-5, atol=0)
            their_mean = theirs - their_var**0.5 * noise
        else:
            their_mean = theirs  # Algorithm 2: no noise at the last step
        torch.testing.assert_close(p.mean, their_mean, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("param,variance", CASES)
def test_full_ancestral_chain_matches_diffusers_loop(registry, param, variance):
    """Same model, same x_T, same generator: the whole 50-step chain agrees with diffusers."""
    T = 50
    d = make_diffusion(registry, parameterization=param, variance=variance, T=T)
    s = scheduler(param, variance, T, clip=True)
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 3, 3, padding=1)

    def model(x, t):
        return net(x) * (1 + t.view(-1, 1, 1, 1) / T)

    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    ours = sample_ancestral(d, model, x_T, generator=torch.Generator().manual_seed(9), clip_denoised=True)
    x, g = x_T, torch.Generator().manual_seed(9)
    with torch.no_grad():
        for i in s.timesteps:
            x = s.step(model(x, torch.full((2,), int(i))), int(i), x, generator=g).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)
