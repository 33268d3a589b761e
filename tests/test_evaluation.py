"""Evaluation: bits/dim through the metric code, batched timesteps, FID sanity, Frechet distance."""

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ddpm_kit.testing import oracle
from helpers import cli, make_diffusion, test_seed
from ddpm_kit.features import (FeatureStats, classifier_score, confident_fraction, features_and_probs,
                               frechet_distance, frechet_distance_stderr, train_classifier)
from ddpm_kit.engine.distributed import LocalState, map_batches, my_batches
from ddpm_kit.runs import RunFolder


def gaussian_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return oracle.quantize(oracle.M + oracle.S * torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64))


def fake_context(diffusion, model, x, tmp_path):
    run = RunFolder(tmp_path / "run")
    run.eval.mkdir(parents=True)

    def save_array(name, array):
        np.save(name if isinstance(name, Path) else run.eval / f"{name}.npy", array)

    from ddpm_kit.noise import ImageNoise

    context = SimpleNamespace(diffusion=diffusion, model=model, model_for=lambda split, rows: model,
                              device=torch.device("cpu"), seed=0, run=run,
                              images=lambda split, limit: x[:limit], save_array=save_array, is_main_process=True,
                              eval_dir=run.eval, out=None,
                              map_batches=lambda total, size, work, desc=None: map_batches(LocalState(), total, size, work),
                              my_share=lambda total, size: my_batches(LocalState(), total, size))
    context.image_noise = lambda rows: ImageNoise(context.seed, rows, context.device)  # as EvalContext's
    return context


@pytest.mark.statistical
def test_bpd_metric_on_the_oracle_gives_the_closed_form_bound(registry, tmp_path):
    """The metric's figures against the closed-form bound (exact normal CDF, the decoder's default), each
    within 4.5 standard errors of its mean over the 48 images (a correct metric fails one of the
    two with probability 1.4e-5 for a random $DDPM_KIT_TEST_SEED)."""
    d = make_diffusion(registry, variance="fixed_beta_tilde")
    x = gaussian_data(48, seed=test_seed(3))
    context = fake_context(d, oracle.EpsOracle(oracle.linear_betas()), x, tmp_path)
    context.seed = test_seed(0)
    metric = registry.build("metric", "bpd", {"limit": 48, "batch_size": 24, "timesteps_per_batch": 10})
    result = metric.compute(context)
    expected = oracle.expected_bound(oracle.linear_betas(), "fixed_beta_tilde")
    terms = np.load(context.run.eval / "bpd_terms.npy")
    assert terms.shape == (48, 1001)
    assert result["bpd"] == pytest.approx(expected["total"], abs=4.5 * result["bpd_stderr"])
    assert result["bpd_L0"] == pytest.approx(expected["L0"], abs=4.5 * terms[:, 0].std(ddof=1) / math.sqrt(48))
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
    chunks = []
    batched = d.calc_bpd_loop(model, x, generator=torch.Generator().manual_seed(7), timesteps_per_batch=7,
                              progress=chunks.append)
    assert chunks == [7, 7, 7, 7, 7, 5]  # the progress bar advances by timestep chunk, T in all
    for key in ("total_bpd", "prior_bpd", "vb", "xstart_mse"):
        torch.testing.assert_close(batched[key], plain[key], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_distance_agrees_with_scipy_sqrtm_on_non_commuting_covariances(seed):
    """pytorch-fid's formula, Tr sqrtm(S_a S_b) by scipy, on covariances whose product is not symmetric."""
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(seed)
    d = 7
    a_half, b_half = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s_a, s_b = a_half @ a_half.T + 0.1 * np.eye(d), b_half @ b_half.T + 0.1 * np.eye(d)
    assert not np.allclose(s_a @ s_b, s_b @ s_a, atol=1e-3)
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * sqrtm(s_a @ s_b).real)
    got = frechet_distance(FeatureStats(mu_a, s_a, 100), FeatureStats(mu_b, s_b, 100))
    assert got == pytest.approx(expected, rel=1e-9)


@pytest.mark.statistical
def test_fid_bootstrap_stderr_matches_the_spread_of_fid_over_independent_sample_sets():
    """Features N(m, diag(s^2)) against an exact N(0, I) reference: the bootstrap standard error
    from one set of 400 rows (mean over 10 sets) against the standard deviation of the distance
    over 400 independent sets (Monte-Carlo relative error ~3.5%, the bootstrap's ~5%; bounds ~5 SE)."""
    rng = np.random.default_rng(test_seed(11))
    d, rows = 4, 400
    reference = FeatureStats(np.zeros(d), np.eye(d), 10**9)
    m, s = np.array([0.3, 0.0, -0.2, 0.0]), np.array([1.5, 0.7, 1.0, 1.2])
    draw = lambda: m + s * rng.normal(size=(rows, d))  # noqa: E731
    spread = np.std([frechet_distance(reference, draw()) for _ in range(400)], ddof=1)
    bootstrap = np.mean([frechet_distance_stderr(reference, draw(), seed=k) for k in range(10)])
    assert 0.75 < bootstrap / spread < 1.33, (bootstrap, spread)


@pytest.mark.statistical
def test_paired_fid_stderr_matches_the_spread_of_the_difference_over_independent_pairs():
    """Two "models" whose rows share their noise (row i of one = 0.9 z_i + 0.3 e_i where the other has z_i):
    the paired bootstrap standard error of FID(a) - FID(b) (mean over 10 pair sets) against the standard
    deviation of that difference over 400 independent pair sets (bounds ~5 SE, as above). Resampling the
    two sets apart would give ~3.5x the spread: the pairing is what the bound checks."""
    rng = np.random.default_rng(test_seed(11))
    d, rows = 4, 400
    reference = FeatureStats(np.zeros(d), np.eye(d), 10**9)
    m, s = np.array([0.3, 0.0, -0.2, 0.0]), np.array([1.5, 0.7, 1.0, 1.2])

    def pair():
        z = rng.normal(size=(rows, d))
        return m + s * z, m + s * (0.9 * z + 0.3 * rng.normal(size=(rows, d)))

    spread = np.std([frechet_distance(reference, a) - frechet_distance(reference, b)
                     for a, b in (pair() for _ in range(400))], ddof=1)
    bootstrap = np.mean([frechet_distance_stderr(reference, a, baseline=b, seed=k)
                         for k, (a, b) in enumerate(pair() for _ in range(10))])
    assert 0.75 < bootstrap / spread < 1.33, (bootstrap, spread)


def test_confident_fraction_counts_top_probabilities_above_the_threshold():
    probs = np.array([[0.95, 0.05], [0.5, 0.5], [0.02, 0.98], [0.9, 0.1]])  # 0.9 itself is not above
    assert confident_fraction(probs) == 0.5
    assert confident_fraction(probs, threshold=0.4) == 1.0


@pytest.mark.slow
def test_fid_caches_the_real_statistics_and_measures_the_floor_at_the_sample_count(finished_run, registry):
    """A second FID with another sample count reads the test split's statistics from the cache
    (the file is not rewritten) and computes only the floor's N training images; every figure
    equals features computed here from the data, the cached classifier and the saved samples."""
    from safetensors.torch import load_file

    from ddpm_kit.images import to_model_range, to_uint8_tensor
    from ddpm_kit.features import DigitClassifier

    run, _ = finished_run
    cache = Path(os.environ["DDPM_KIT_CACHE"]) / "feature-nets"
    before = {p.name: p.stat().st_mtime_ns for p in cache.glob("stats-*.npz")}
    result = cli("evaluate", str(run), "--metric", "fid", "--num-samples", "12")
    assert result.returncode == 0, result.stderr
    after = {p.name: p.stat().st_mtime_ns for p in cache.glob("stats-*.npz")}
    assert len(set(after) - set(before)) == 1  # the floor at 12 training images; the test split's was cached
    assert {name: after[name] for name in before} == before
    figures = json.loads((run / "eval" / "fid.json").read_text())
    assert figures["fid_samples"] == 12 and figures["fid_floor_images"] == 12

    digits = registry.build("dataset", "digits")  # the tiny recipe's data: 8x8, one channel, resized
    train, test = (to_model_range(to_uint8_tensor(digits[s], 8, 1, "resize")) for s in ("train", "test"))
    digest = figures["fid_extractor"].split()[0].removeprefix("classifier-")
    net = DigitClassifier(1, 8, 10)
    net.load_state_dict(load_file(str(cache / f"classifier-{digest}.safetensors")))
    samples = to_model_range(torch.from_numpy(np.load(run / "samples" / "eval_12.npz")["images"]))
    (f_test, p_test), (f_train, _), (f_fake, p_fake) = (features_and_probs(net.eval(), x)
                                                        for x in (test, train[:12], samples))
    assert figures["fid"] == pytest.approx(frechet_distance(f_test, f_fake), rel=1e-6)
    assert figures["fid_real_floor"] == pytest.approx(frechet_distance(f_test, f_train), rel=1e-6)
    assert figures["confident"] == confident_fraction(p_fake)
    confident = confident_fraction(p_fake)
    assert figures["confident_stderr"] == pytest.approx(np.sqrt(confident * (1 - confident) / 12), rel=1e-9)
    f_test_stats = FeatureStats.fit(f_test)
    assert figures["fid_stderr"] == pytest.approx(frechet_distance_stderr(f_test_stats, f_fake), rel=1e-6)
    assert figures["fid_stderr"] > 0
    assert figures["confident_real"] == confident_fraction(p_test)
    assert figures["classifier_score_real"] == pytest.approx(classifier_score(p_test), rel=1e-9)
    with np.load(run / "eval" / "fid_features_12.npz") as kept:  # what `ddpm-kit report` pairs runs by
        np.testing.assert_allclose(kept["features"], f_fake, rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(kept["confident"], p_fake.max(1) > 0.9)
        np.testing.assert_allclose(kept["reference_mu"], f_test.mean(0), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(kept["reference_sigma"], np.cov(f_test, rowvar=False), rtol=1e-6, atol=1e-9)
        assert int(kept["reference_n"]) == len(f_test) and str(kept["extractor"]) == f"classifier-{digest}"
        assert int(kept["sample_seed"]) == 1  # drawn now (eval_12.npz), with the run's seed 0 + 1


def test_fid_of_training_images_against_themselves_is_near_zero_and_noise_is_far(registry):
    from ddpm_kit.images import to_model_range, to_uint8_tensor

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
