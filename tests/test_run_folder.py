"""The run folder names every file of a run in one place (``ddpm_kit.runs``): the layout that
docs/training.md shows is the code's, every file a run writes is in it, and every name the code
builds matches its entry."""

import re
from pathlib import Path

import pytest

from ddpm_kit.runs import LAYOUT, RunFolder, _entry_for, layout_text

DOCS = Path(__file__).parents[1] / "docs" / "training.md"


def test_the_documented_layout_is_the_codes():
    block = re.search(r"## The run folder\n\n```\n(.*?)```\n", DOCS.read_text(), re.S).group(1)
    assert block == layout_text()


@pytest.mark.slow
def test_every_file_a_run_writes_is_in_the_layout(finished_run):
    run, _ = finished_run
    files = [p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()]
    checkpoint_files = [f for f in files if f.startswith("checkpoints/")]
    unnamed = [f for f in files if f not in checkpoint_files and _entry_for(f) is None]
    assert files and not unnamed
    assert {_entry_for(f.rsplit("/", 1)[0] + "/")[0].pattern for f in checkpoint_files} == {"checkpoints/step_<NNNNNNN>/"}


def test_every_name_the_folder_builds_is_its_layout_entry(tmp_path):
    run = RunFolder(tmp_path)
    expected = {
        run.recipe_file: "recipe.toml", run.metrics_file: "metrics.jsonl", run.summary_file: "summary.json",
        run.checkpoint_dir(400): "checkpoints/step_<NNNNNNN>/", run.best_checkpoint: "checkpoints/best/",
        run.weights_file(True): "model/ema.safetensors", run.weights_file(False): "model/model.safetensors",
        run.samples_file(): "samples/<name>.npz", run.samples_file(run.sample_name("ddim-50")): "samples/<name>.npz",
        run.samples_file(run.metric_sample_name(500, "ddim-50")): "samples/eval_<N>[_<tag>].npz",
        run.grid_file(): "samples/<name>.png", run.progressive_file(): "samples/<name>_progressive.png",
        run.training_grid_file(1200): "samples/step_<NNNNNNN>.png",
        run.results_file(): "eval/metrics.json", run.results_file("fid", "ddim-50"): "eval/<metric>[_<tag>].json",
        run.bpd_file("bpd_terms"): "eval/[<label>_]bpd_terms.npy",
        run.bpd_file("xstart_mse", "bpd_fixed_beta_tilde_50"): "eval/[<label>_]xstart_mse.npy",
        run.bpd_file("rate_distortion", suffix=".png"): "eval/[<label>_]rate_distortion.png",
        run.features_file(64, "w3"): "eval/fid_features_<N>[_<tag>].npz",
        run.training_eval_dir(800): "eval/during-training/step_<NNNNNNN>/",
    }
    for path, pattern in expected.items():
        relative = path.relative_to(tmp_path).as_posix() + ("/" if pattern.endswith("/") else "")
        assert _entry_for(relative)[0].pattern == pattern, relative
    assert run.checkpoint_dir(400).name == "step_0000400" and run.samples_file(run.sample_name("x")).name == "final_x.npz"
    assert {e.pattern for e in LAYOUT} >= set(expected.values())


def test_a_damaged_file_is_named_with_the_command_that_writes_it_again(tmp_path):
    run = RunFolder(tmp_path / "r")
    (run.eval).mkdir(parents=True)
    run.results_file().write_text("{not json")
    with pytest.raises(Exception) as raised:
        run.read_json(run.results_file())
    assert str(raised.value) == (f"{run.results_file()}: damaged (not JSON: JSONDecodeError); write it again with "
                                 f"`ddpm-kit evaluate {run.path}`")
    bad = run.samples_file(run.metric_sample_name(64))
    bad.parent.mkdir()
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(Exception, match=re.escape(f"`rm {bad}; ddpm-kit evaluate {run.path} --metric fid`")):
        run.read_samples(run.metric_sample_name(64))
    assert run.read_samples("final") is None and run.read_json(run.summary_file) == {}
