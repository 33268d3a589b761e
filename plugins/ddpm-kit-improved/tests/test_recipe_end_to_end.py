"""A recipe that uses the plugin end to end: cosine + learned_range + hybrid, sampled with DDIM."""

import json
from pathlib import Path

import numpy as np
import pytest

TINY = Path(__file__).resolve().parents[3] / "tests" / "recipes" / "tiny.toml"


def ddpm_kit(*args: str) -> int:
    """The CLI in this process (as ``python -m ddpm_kit`` without starting an interpreter): its exit
    status; accelerate's shared state is reset afterwards."""
    from accelerate.state import AcceleratorState

    from ddpm_kit.cli import main

    try:
        main(list(args))
        return 0
    except SystemExit as exc:
        return exc.code
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.slow
def test_improved_recipe_trains_samples_and_evaluates(tmp_path, monkeypatch):
    overrides = ['diffusion.schedule={name="cosine", T=50}', 'diffusion.variance={name="learned_range"}',
                 'objective={name="hybrid"}', 'sample.sampler={name="ddim", steps=10, eta=0.0}',
                 'eval.metrics=[{name="bpd", limit=8, batch_size=8}]', "train.steps=4"]
    args = [a for o in overrides for a in ("--set", o)]
    monkeypatch.setenv("DDPM_KIT_CACHE", str(tmp_path / "cache"))
    assert ddpm_kit("run", str(TINY), "--run-dir", str(tmp_path / "run"), *args) == 0
    recipe = (tmp_path / "run" / "recipe.toml").read_text()
    assert 'name = "cosine"' in recipe and 'name = "learned_range"' in recipe and 'name = "ddim"' in recipe
    images = np.load(tmp_path / "run" / "samples" / "final.npz")["images"]
    assert images.shape == (8, 1, 8, 8)
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert np.isfinite(metrics["bpd"]) and metrics["bpd_images"] == 8


def test_respacing_more_steps_than_the_schedule_has_is_a_recipe_error(tmp_path, capsys):
    code = ddpm_kit("run", str(TINY), "--run-dir", str(tmp_path / "run"), "--set",
                    'sample.sampler={name="respaced", steps=100}')
    assert code == 2
    assert capsys.readouterr().err.strip().endswith(
        "sample.sampler: sampler 'respaced' (plugin 'improved', ddpm-kit-improved 0.1.0) failed to build: "
        "ValueError: steps must lie in 1..50 (the schedule's T), got 100")
    assert not (tmp_path / "run").exists()
