"""Evaluation: bits/dim through the metric code, batched timesteps, FID sanity, Frechet distance."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import oracle
from helpers import make_diffusion
from ddpm_kit.features import classifier_score, features_and_probs, frechet_distance, train_classifier
from ddpm_kit.engine.distributed import LocalState, map_batches
from ddpm_kit.runs import RunFolder


def gaussian_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return oracle.quantize(oracle.M + oracle.S * torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64))


def fake_context(diffusion, model, x, tmp_path):
    run = RunFolder(tmp_path / "run")
    run.eval.mkdir(parents=True)

    def save_array(name, array):
        np.save(run.eval / f"{name}.npy", array)

    return SimpleNamespace(diffusion=diffusion, model=model, device=torch.device("cpu"), seed=0, run=run,
                           images=lambda split, limit: x[:limit], save_array=save_array, is_main_process=True, eval_dir=run.eval,
                           map_batches=lambda total, size, work, desc=None: map_batches(LocalState(), total, size, work))


def test_bpd_metric_on_the_oracle_gives_the_closed_form_bound(registry, tmp_path):
    d = make_diffusion(registry, variance="fixed_beta_tilde")
    x = gaussian_data(48, seed=3)
    context = fake_context(d, oracle.EpsOracle(oracle.linear_betas()), x, tmp_path)
    metric = registry.build("metric", "bpd", {"limit": 48, "batch_size": 24, "timesteps_per_batch": 10})
    result = metric.compute(context)
    expected = oracle.expected_bound(oracle.linear_betas(), "fixed_beta_tilde")
    terms = np.load(context.run.eval / "bpd_terms.npy")
    assert terms.shape == (48, 1001)
    assert result["bpd"] == pytest.approx(expected["total"], abs=4 * result["bpd_stderr"] + 1e-3)
    assert result["bpd_L0"] == pytest.approx(expected["L0"], abs=0.05)
    assert (context.run.eval / "bpd_per_timestep.png").is_file() and (context.run.eval / "rate_distortion.png").is_file()


@pytest.mark.parametrize("param,variance", [("eps", "fixed_beta"), ("mu", "learned")])
def test_batched_timesteps_equal_the_plain_loop(registry, param, variance):
    d = make_diffusion(registry, parameterization=param, variance=variance, T=40)
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, d.output_channels(1), 3, padding=1).double()

    def model(x, t):
        return net(x) * 0.1 + (t.view(-1, 1, 1, 1) / 40.0) - (2.0 if variance == "learned" else 0.0)

    x = gaussian_data(6, seed=1)
    plain = d.calc_bpd_loop(model, x, generator=torch.Generator().manual_seed(7))
    batched = d.calc_bpd_loop(model, x, generator=torch.Generator().manual_seed(7), timesteps_per_batch=7)
    for key in ("total_bpd", "prior_bpd", "vb", "xstart_mse"):
        torch.testing.assert_close(batched[key], plain[key], rtol=1e-10, atol=1e-10)


def test_plain_loop_is_improved_diffusions_calc_bpd_loop(registry):
    """Column t of vb is the bound term at t; written out as a one-timestep-at-a-time loop."""
    d = make_diffusion(registry, T=30)
    model = oracle.EpsOracle(d.betas.numpy())
    x = gaussian_data(4, seed=2)
    out = d.calc_bpd_loop(model, x, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    for i in reversed(range(30)):
        t = torch.full((4,), i)
        x_t = d.q_sample(x, t, torch.randn(x.shape, generator=g, dtype=x.dtype))
        torch.testing.assert_close(out["vb"][:, i], d.vb_terms_bpd(model, x, x_t, t)["output"])


def test_frechet_distance_of_known_gaussians():
    """FD(N(0, I), N(1, 2I)) in d=4 is 4 + 4 (1 + 2 - 2 sqrt 2)."""
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (200_000, 4))
    b = rng.normal(1, math.sqrt(2), (200_000, 4))
    assert frechet_distance(a, b) == pytest.approx(4 + 4 * (3 - 2 * math.sqrt(2)), rel=0.02)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_fid_of_training_images_against_themselves_is_near_zero_and_noise_is_far(registry):
    from ddpm_kit.data import to_model_range, to_uint8_tensor

    d = registry.build("dataset", "digits")
    x = to_model_range(to_uint8_tensor(d["train"], 8, 1, "resize"))
    y = torch.tensor(d["train"]["label"])
    net = train_classifier(x, y, epochs=3)
    test_x = to_model_range(to_uint8_tensor(d["test"], 8, 1, "resize"))
    feats, probs = features_and_probs(net, x)
    accuracy = (features_and_probs(net, test_x)[1].argmax(1) == np.array(d["test"]["label"])).mean()
    assert accuracy > 0.85
    assert frechet_distance(feats, feats) < 1e-6
    half_a, half_b = feats[: len(feats) // 2], feats[len(feats) // 2:]
    noise = torch.rand(len(x), 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise_feats, noise_probs = features_and_probs(net, noise)
    real_vs_real, real_vs_noise = frechet_distance(half_a, half_b), frechet_distance(feats, noise_feats)
    assert real_vs_noise > 20 * real_vs_real
    assert classifier_score(probs) > 5 > classifier_score(noise_probs)  # ~10 classes, confident, balanced


def test_inception_fid_without_its_weights_file_says_what_to_do(registry, tmp_path):
    from ddpm_kit.errors import DdpmKitError

    metric = registry.build("metric", "fid_inception", {"weights": str(tmp_path / "missing.pth")})
    with pytest.raises(DdpmKitError, match="weights file .*missing.pth' not found; download pt_inception"):
        metric.compute(None)
