"""ddpm-kit-pixelstats on its own, installed (`pip install .` then `pytest tests`): ddpm_kit.testing only."""

import json

import numpy as np

from ddpm_kit.testing import cli, train_tiny_run


def test_the_metric_scores_a_tiny_run_and_keeps_its_histograms(tmp_path):
    run = train_tiny_run(tmp_path / "run", "train.steps=2", sample=False)
    result = cli("evaluate", str(run), "--metric", "pixelstats", "--param", "num_samples=8")
    assert result.returncode == 0, result.stderr
    figures = json.loads((run / "eval" / "pixelstats_num_samples8.json").read_text())
    assert figures["pixelstats_samples"] == 8 and 0 <= figures["pixelstats_mean_gap"] <= 2
    histograms = np.load(run / "eval" / "pixelstats_histograms.npy")
    assert histograms.shape == (2, 32) and histograms[0].sum() == 8 * 64
