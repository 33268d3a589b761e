"""`ddpm-kit analytic-gamma RUN` and `ddpm-kit sample RUN --sampler analytic` on a tiny finished
run, through the installed entry point (in-process CLI), and the refusals that say what to run."""

import json

import numpy as np
import pytest

from helpers import TINY, cli  # tests/helpers.py (conftest.py puts tests/ on the path)


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


def test_a_recipe_cannot_train_with_the_analytic_sampler(tmp_path):
    result = cli("run", str(TINY), "--run-dir", str(tmp_path / "new"), "--set", 'sample.sampler.name="analytic"')
    assert result.returncode == 2 and not (tmp_path / "new").exists()
    assert "sampler 'analytic' samples a finished run: `ddpm-kit analytic-gamma RUN`" in result.stderr
