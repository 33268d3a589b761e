"""A recipe that uses the plugin end to end: cosine + learned_range + hybrid, sampled with DDIM."""

import json

import numpy as np
import pytest

from ddpm_kit.testing import TINY, cli


@pytest.mark.slow
def test_improved_recipe_trains_samples_and_evaluates(tmp_path, monkeypatch):
    overrides = ['diffusion.schedule={name="cosine", T=50}', 'diffusion.variance={name="learned_range"}',
                 'objective={name="hybrid"}', 'sample.sampler={name="ddim", steps=10, eta=0.0}',
                 'eval.metrics=[{name="bpd", limit=8, batch_size=8}]', "train.steps=4"]
    args = [a for o in overrides for a in ("--set", o)]
    monkeypatch.setenv("DDPM_KIT_CACHE", str(tmp_path / "cache"))
    result = cli("run", str(TINY), "--run-dir", str(tmp_path / "run"), *args)
    assert result.returncode == 0, result.stderr
    recipe = (tmp_path / "run" / "recipe.toml").read_text()
    assert 'name = "cosine"' in recipe and 'name = "learned_range"' in recipe and 'name = "ddim"' in recipe
    images = np.load(tmp_path / "run" / "samples" / "final.npz")["images"]
    assert images.shape == (8, 1, 8, 8)
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert np.isfinite(metrics["bpd"]) and metrics["bpd_images"] == 8


def test_respacing_more_steps_than_the_schedule_has_is_a_recipe_error(tmp_path):
    result = cli("run", str(TINY), "--run-dir", str(tmp_path / "run"), "--set",
                 'sample.sampler={name="respaced", steps=100}')
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        "sample.sampler: sampler 'respaced' (plugin 'improved', ddpm-kit-improved 0.1.0): "
        "steps must lie in 1..50 (the schedule's T), got 100")
    assert not (tmp_path / "run").exists()
