"""CLI paths held against outside expectations: `sample --raw` draws from model.safetensors (a sample
drawn here from those weights directly is the same), `--seed` decides the images, and `sweep`
keeps finished rows, resumes an interrupted one and replaces only its block of the doc."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TINY, cli

pytestmark = pytest.mark.slow


@pytest.fixture
def run_copy(finished_run, tmp_path):
    return Path(shutil.copytree(finished_run[0], tmp_path / "run"))


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


def test_a_sweep_keeps_finished_rows_resumes_an_interrupted_one_and_replaces_its_block(tmp_path,
                                                                                     fresh_accelerate_state):
    recipes = []
    for name in ("first", "second"):
        text = TINY.read_text().replace('name = "tiny"', f'name = "{name}"\noutput_dir = "{tmp_path / "runs"}"')
        (tmp_path / f"{name}.toml").write_text(text)
        recipes.append(tmp_path / f"{name}.toml")
    doc = tmp_path / "doc.md"
    doc.write_text("# Results\n\nbefore\n<!-- sweep:begin -->\nold table\n<!-- sweep:end -->\nafter\n")
    common = ["--set", "eval.metrics=[{name=\"bpd\", limit=4, batch_size=4, timesteps_per_batch=25}]"]
    result = cli("sweep", *map(str, recipes), "--pair", "second:frist", "--report-dir", str(tmp_path / "report"))
    assert result.returncode != 0 and "no run named 'frist'; the runs are first, second" in result.stderr
    assert not (tmp_path / "runs").exists()  # the pairs are checked before any recipe runs
    assert cli("sweep", str(recipes[0]), *common, "--report-dir", str(tmp_path / "report")).returncode == 0
    first = tmp_path / "runs" / "first"
    kept = (first / "model" / "ema.safetensors").read_bytes(), (first / "eval" / "metrics.json").read_text()
    # the second run interrupted after its checkpoint at step 4 (of 6): no final weights, no evaluation
    second = tmp_path / "runs" / "second"
    assert cli("run", str(recipes[1]), *common, "--set", "train.steps=4", "--no-sample", "--no-eval").returncode == 0
    shutil.rmtree(second / "model")
    result = cli("sweep", *map(str, recipes), *common, "--report-dir", str(tmp_path / "report"), "--doc", str(doc),
                 "--pair", "first:second")  # the reverse of the baseline line "second minus first"
    assert result.returncode == 0, result.stderr
    assert f"finished earlier, kept ({first})" in result.stdout and f"resuming {second} from step 4" in result.stdout
    assert ((first / "model" / "ema.safetensors").read_bytes(), (first / "eval" / "metrics.json").read_text()) == kept
    text = doc.read_text()
    assert text.startswith("# Results\n\nbefore\n<!-- sweep:begin -->\n") and text.endswith("<!-- sweep:end -->\nafter\n")
    block = text.split("<!-- sweep:begin -->\n")[1].split("<!-- sweep:end -->")[0]
    assert "old table" not in block and "first" in block and "second" in block
    assert "- second minus first: " in block and "- first minus second: " in block
    assert block == (tmp_path / "report" / "report.md").read_text()


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
