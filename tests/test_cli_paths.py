"""CLI paths held against outside expectations: `sample --raw` draws from model.safetensors (a sample
drawn here from those weights directly is the same), `--seed` decides the images, and a bad option
of sample or evaluate is reported against the option; a `ddpm-kit` process starts and ends with
fewer garbage collections. (`sweep`: tests/test_report.py.)"""

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import cli

pytestmark = pytest.mark.slow


def images(run: Path, name: str) -> np.ndarray:
    return np.load(run / "samples" / f"{name}.npz")["images"]


def test_sample_raw_draws_from_the_raw_weights(run_copy):
    from safetensors.torch import load_file

    from ddpm_kit.engine import sample_images
    from ddpm_kit.plugins import get_registry
    from ddpm_kit.workflow import load_run

    assert cli("sample", str(run_copy), "-n", "4", "--raw", "--name", "raw", threads=1).returncode == 0
    assert cli("sample", str(run_copy), "-n", "4", "--name", "ema", threads=1).returncode == 0
    components, _ = load_run(get_registry(), run_copy)
    model = components.build_backbone()
    model.load_state_dict(load_file(str(run_copy / "model" / "model.safetensors")))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI call above computed (threads=1): the bytes must match
    try:
        direct = sample_images(components, model.eval(), 4, torch.device("cpu")).numpy()
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(images(run_copy, "raw"), direct)
    assert not np.array_equal(images(run_copy, "ema"), direct)  # the flag chose other weights


def test_the_seed_decides_the_images(run_copy):
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        assert cli("sample", str(run_copy), "-n", "4", "--seed", seed, "--name", name).returncode == 0
    assert np.array_equal(images(run_copy, "a"), images(run_copy, "b"))
    assert not np.array_equal(images(run_copy, "a"), images(run_copy, "c"))


def test_a_bad_option_of_sample_or_evaluate_is_reported_against_the_option(run_copy):
    """A sampler parameter given on the command line is the option's error, not the run's recipe's."""
    result = cli("sample", str(run_copy), "-n", "2", "--sampler", "ancestral", "--sampler-param", "p=1.5")
    assert result.returncode == 2
    assert result.stderr.strip().startswith(
        "error: --sampler ancestral --sampler-param p=1.5: sample.sampler.p: sampler 'ancestral' has no parameter 'p'")
    assert str(run_copy) not in result.stderr
    result = cli("evaluate", str(run_copy), "--metric", "fid", "--sampler", "ancestral", "--sampler-param",
                 "num_timesteps=5")
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: --sampler ancestral --sampler-param num_timesteps=5: sample.sampler.num_timesteps: sampler "
        "'ancestral': 'num_timesteps' is supplied by the engine, never by a recipe; remove it")


def test_a_ddpm_kit_process_collects_garbage_every_10000_objects_and_skips_the_final_collection(monkeypatch):
    """The console script and `python -m ddpm_kit` (what torchrun and accelerate launch start) run
    ``entry``: ``main`` under a collection threshold of 10,000 (Python's default: 700), then what is
    alive is frozen, so that the interpreter's final collection skips it."""
    import gc
    import runpy
    from importlib.metadata import entry_points

    from ddpm_kit import cli as cli_module

    assert [e.value for e in entry_points(group="console_scripts", name="ddpm-kit")] == ["ddpm_kit.cli:entry"]
    started = []
    monkeypatch.setattr(cli_module, "entry", lambda: started.append("entry"))
    runpy.run_module("ddpm_kit", run_name="__main__")
    assert started == ["entry"]
    monkeypatch.undo()

    seen = {}
    monkeypatch.setattr(cli_module, "main", lambda: seen.update(threshold=gc.get_threshold(),
                                                                 frozen=gc.get_freeze_count()))
    session = gc.get_threshold()
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)  # a fresh interpreter's
    try:
        cli_module.entry()
        assert seen == {"threshold": (10_000, 10, 10), "frozen": 0} and gc.get_freeze_count() > 0
    finally:
        gc.freeze()
        gc.set_threshold(*session)
