"""v-prediction against its definitions, diffusers' get_velocity and the Gaussian oracle; the
min-SNR weights against Hang et al.'s formula at hand-computed t."""

import math

import numpy as np
import pytest
import torch

from ddpm_kit.testing import oracle
from ddpm_kit.testing import TINY
from ddpm_kit.testing import diffusion as make_diffusion
from ddpm_kit.testing import statistical_seed as test_seed
from ddpm_kit.builtins.samplers import sample_ancestral
from ddpm_kit.errors import DdpmKitError

T_AT = torch.tensor([0, 9, 99, 499, 999])


def case(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(5, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(5, 1, 4, 4, generator=g, dtype=torch.float64)
    ab = torch.from_numpy(np.cumprod(1 - oracle.linear_betas()))[T_AT].view(-1, 1, 1, 1)
    return x0, eps, ab


def test_v_conversions_follow_the_definition(registry):
    """v = sqrt(ab) eps - sqrt(1 - ab) x0 (Salimans & Ho 2022, appendix D) with ab from numpy; the
    network output v gives back x0 and eps."""
    d = make_diffusion(registry, parameterization="v")
    p = d.parameterization
    x0, eps, ab = case()
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    v = ab.sqrt() * eps - (1 - ab).sqrt() * x0
    torch.testing.assert_close(p.from_x0(d, x0, x_t, T_AT), v, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(p.target(d, x0, x_t, T_AT, eps), v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p.predict_x0(d, v, x_t, T_AT), x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(p.predict_eps(d, v, x_t, T_AT), eps, rtol=1e-10, atol=1e-10)
    assert p.diffusers_prediction_type == "v_prediction"


def test_the_v_target_is_diffusers_get_velocity(registry):
    from diffusers import DDPMScheduler

    d = make_diffusion(registry, parameterization="v")
    x0, eps, _ = case(1)
    x_t = d.q_sample(x0, T_AT, eps)
    expected = DDPMScheduler(num_train_timesteps=1000).get_velocity(x0, eps, T_AT)
    torch.testing.assert_close(d.parameterization.target(d, x0, x_t, T_AT, eps), expected, rtol=1e-6, atol=1e-6)


class VOracle(torch.nn.Module):
    """The exact eps* of oracle.EpsOracle, given as v = sqrt(ab) eps - sqrt(1 - ab) x0-hat."""

    def __init__(self, betas):
        super().__init__()
        self.eps, self.x0 = oracle.EpsOracle(betas, "eps"), oracle.EpsOracle(betas, "x0")
        self.ab = torch.from_numpy(np.cumprod(1 - betas))

    def forward(self, x, t):
        ab = self.ab[t].to(x.dtype).view(-1, 1, 1, 1)
        return ab.sqrt() * self.eps(x, t) - (1 - ab).sqrt() * self.x0(x, t)


@pytest.mark.slow  # about 2 s: 1,000 steps over 64 images of 32x32
@pytest.mark.statistical
def test_ancestral_sampling_with_v_hits_the_closed_form_moments(registry):
    """65,536 pixels against the oracle's closed-form mean and std, 4.5 standard errors each."""
    d = make_diffusion(registry, parameterization="v", variance="fixed_beta")
    seed = test_seed(41)
    x_T = torch.randn(64, 1, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = sample_ancestral(d, VOracle(oracle.linear_betas()), x_T, generator=torch.Generator().manual_seed(seed + 1),
                         clip_denoised=False)
    mean, std = oracle.sampled_moments(oracle.linear_betas(), "fixed_beta")
    n = x.numel()
    assert x.mean().item() == pytest.approx(mean, abs=4.5 * std / math.sqrt(n))
    assert x.std().item() == pytest.approx(std, abs=4.5 * std / math.sqrt(2 * n))


def test_diffusers_samplers_read_v_as_v_prediction(registry):
    """diffusers' DDIM and DPM-Solver++ on the v-oracle give what they give on the eps-oracle."""
    x_T = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for name in ("diffusers-ddim", "diffusers-dpm-solver++"):
        sampler = registry.build("sampler", name, {"steps": 20}, num_timesteps=1000)
        got = sampler(make_diffusion(registry, parameterization="v"), VOracle(oracle.linear_betas()), x_T)
        want = sampler(make_diffusion(registry, parameterization="eps"), oracle.EpsOracle(oracle.linear_betas()), x_T)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
def test_min_snr_weights_are_the_papers_at_hand_computed_t(registry, param):
    """Hang et al. 2023, gamma = 5: SNR_t = ab / (1 - ab); the loss is min(SNR, 5) x the x0 MSE, so
    the weight on the eps MSE is min(SNR, 5) / SNR, on the x0 MSE min(SNR, 5), on the v MSE
    min(SNR, 5) / (SNR + 1). Checked at t = 1, 10, 100, 500, 1000 (0-based 0, 9, 99, 499, 999)
    with ab from the linear schedule by hand, on a network that outputs zeros (MSE = mean target^2)."""
    d = make_diffusion(registry, parameterization=param)
    objective = registry.build("objective", "min_snr", {"gamma": 5.0})
    objective.validate_diffusion(d)
    betas = np.linspace(1e-4, 0.02, 1000)
    ab = np.cumprod(1 - betas)[T_AT.numpy()]
    snr = ab / (1 - ab)
    assert snr[0] > 5 > snr[-1]  # both sides of the clamp
    expected = {"eps": np.minimum(snr, 5) / snr, "x0": np.minimum(snr, 5), "v": np.minimum(snr, 5) / (snr + 1)}[param]
    x0, eps, _ = case(3)
    out = objective.losses(d, lambda x, t: torch.zeros_like(x), x0, T_AT, eps)
    x_t = np.sqrt(ab)[:, None] * x0.flatten(1).numpy() + np.sqrt(1 - ab)[:, None] * eps.flatten(1).numpy()
    target = {"eps": eps.flatten(1).numpy(), "x0": x0.flatten(1).numpy(),
              "v": np.sqrt(ab)[:, None] * eps.flatten(1).numpy() - np.sqrt(1 - ab)[:, None] * x0.flatten(1).numpy()}[param]
    assert x_t.shape == target.shape
    np.testing.assert_allclose(out["loss"].numpy(), expected * (target**2).mean(1), rtol=1e-9)
    # each weighting is the same loss: min(SNR, 5) x the x0-hat error, whatever the output
    x0_hat = d.parameterization.predict_x0(d, torch.full_like(x0, 0.3), torch.from_numpy(x_t).view_as(x0), T_AT)
    x0_err = ((x0_hat - x0) ** 2).flatten(1).mean(1).numpy()
    got = objective.losses(d, lambda x, t: torch.full_like(x, 0.3), x0, T_AT, eps)["loss"].numpy()
    np.testing.assert_allclose(got, np.minimum(snr, 5) * x0_err, rtol=1e-8)


def test_min_snr_refuses_what_it_cannot_weight(registry):
    objective = registry.build("objective", "min_snr", {})
    with pytest.raises(DdpmKitError, match="not 'mu'"):
        objective.validate_diffusion(make_diffusion(registry, parameterization="mu"))
    with pytest.raises(DdpmKitError, match="cannot train variance 'learned'"):
        objective.validate_diffusion(make_diffusion(registry, variance="learned"))


@pytest.mark.slow
def test_a_v_min_snr_run_trains_samples_and_exports(tmp_path, fresh_accelerate_state):
    from diffusers import DDPMPipeline

    from ddpm_kit.cli import main

    run = tmp_path / "run"
    main(["run", str(TINY), "--run-dir", str(run), "--set", 'diffusion.parameterization={name="v"}',
          "--set", 'objective={name="min_snr", gamma=5.0}', "--set", "train.steps=4", "--set",
          'sample.sampler={name="diffusers-dpm-solver++", steps=10}', "--set", "eval.metrics=[]"])
    assert np.load(run / "samples" / "final.npz")["images"].shape == (8, 1, 8, 8)
    main(["export", str(run), str(tmp_path / "pipe")])
    pipe = DDPMPipeline.from_pretrained(str(tmp_path / "pipe"))
    assert pipe.scheduler.config.prediction_type == "v_prediction"
