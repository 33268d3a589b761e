"""`ddpm-kit analytic-gamma RUN` and `ddpm-kit sample RUN --sampler analytic` on a tiny finished
run, through the installed entry point (in-process CLI), and the refusals that say what to run."""

import json

import numpy as np
import pytest

from ddpm_kit.testing import TINY, cli


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("analytic") / "run"
    assert cli("run", str(TINY), "--run-dir", str(run), "--set", "train.steps=4", "--no-sample", "--no-eval").returncode == 0
    return run


def test_gamma_of_a_run_then_k_step_sampling_with_the_optimal_variance(run):
    assert cli("analytic-gamma", str(run), "--images", "32").returncode == 0
    stored = json.loads((run / "analytic" / "gamma.json").read_text())
    assert len(stored["gamma"]) == len(stored["stderr"]) == 50 and stored["images"] == 32
    assert all(g > 0 for g in stored["gamma"]) and all(e > 0 for e in stored["stderr"])
    assert cli("sample", str(run), "--sampler", "analytic", "--steps", "10", "-n", "4").returncode == 0
    images = np.load(run / "samples" / "final_analytic-10.npz")
    assert images["images"].shape == (4, 1, 8, 8) and "analytic" in str(images["drawn_by"])
    stored["weights_sha256"] = "0" * 64  # as if the weights had changed since
    (run / "analytic" / "gamma.json").write_text(json.dumps(stored))
    result = cli("sample", str(run), "--sampler", "analytic", "--steps", "10", "-n", "4")
    assert result.returncode == 2
    assert "was estimated for other weights: run `ddpm-kit analytic-gamma" in result.stderr
    (run / "analytic" / "gamma.json").write_text(json.dumps(stored)[:40])  # cut off mid-write
    result = cli("sample", str(run), "--sampler", "analytic", "--steps", "10", "-n", "4")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "gamma.json is damaged (JSONDecodeError): run `ddpm-kit analytic-gamma" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    (run / "analytic" / "gamma.json").write_text(json.dumps(stored))  # whole again (for other weights): the
    # module's other tests see a file they know to re-estimate


def test_a_recipe_cannot_train_with_the_analytic_sampler(tmp_path):
    result = cli("run", str(TINY), "--run-dir", str(tmp_path / "new"), "--set", 'sample.sampler.name="analytic"')
    assert result.returncode == 2 and not (tmp_path / "new").exists()
    assert "sampler 'analytic' samples a finished run: `ddpm-kit analytic-gamma RUN`" in result.stderr


@pytest.mark.slow  # about 1.5 s: the bound of 4 images over 10 and 50 steps
def test_the_bound_with_the_analytic_variance_through_the_cli(run):
    """`ddpm-kit evaluate RUN --metric bpd_analytic --param steps=10`: the K-step bound's files and
    figures carry K; its prior term L_T is the built-in bound's (both end at timestep T-1)."""
    if not (run / "analytic" / "gamma.json").is_file() or "0" * 64 in (run / "analytic" / "gamma.json").read_text():
        assert cli("analytic-gamma", str(run), "--images", "16").returncode == 0
    result = cli("evaluate", str(run), "--metric", "bpd_analytic", "--param", "steps=10", "--limit", "4")
    assert result.returncode == 0, result.stderr
    figures = json.loads((run / "eval" / "bpd_analytic_steps10.json").read_text())
    assert figures["bpd_analytic_10_images"] == 4 and figures["bpd_analytic_10_stderr"] > 0
    terms = np.load(run / "eval" / "bpd_analytic_10_bpd_terms.npy")
    assert terms.shape == (4, 11) and (run / "eval" / "bpd_analytic_10_bpd_per_timestep.png").is_file()
    assert cli("evaluate", str(run), "--metric", "bpd", "--param", "limit=4").returncode == 0
    np.testing.assert_allclose(terms[:, -1], np.load(run / "eval" / "bpd_terms.npy")[:, -1], rtol=1e-6)
    result = cli("evaluate", str(run), "--metric", "bpd_analytic", "--param", "steps=99")
    assert result.returncode == 2 and "steps must lie in 1..50" in result.stderr


def test_sampling_on_the_optimal_trajectory_through_the_cli(run):
    """`--sampler analytic --steps 10 --sampler-param trajectory=optimal`: the files carry the
    trajectory, and a trajectory that does not exist is refused by name."""
    if "0" * 64 in (run / "analytic" / "gamma.json").read_text() if (run / "analytic" / "gamma.json").is_file() else True:
        assert cli("analytic-gamma", str(run), "--images", "16").returncode == 0
    result = cli("sample", str(run), "--sampler", "analytic", "--steps", "10", "--sampler-param", "trajectory=optimal", "-n", "4")
    assert result.returncode == 0, result.stderr
    images = np.load(run / "samples" / "final_analytic-10-trajectoryoptimal.npz")
    assert images["images"].shape == (4, 1, 8, 8) and "optimal" in str(images["drawn_by"])
    result = cli("sample", str(run), "--sampler", "analytic", "--sampler-param", "trajectory=best", "-n", "4")
    assert result.returncode == 2 and "trajectory must be one of even, optimal, got 'best'" in result.stderr
