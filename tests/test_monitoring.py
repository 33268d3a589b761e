"""Evaluation during training (entries at the right steps, checkpoints/best, resume continues the
history) and trackers named in the recipe."""

import json

import pytest

from helpers import TINY, cli, set_args
from ddpm_kit.runs import verify_manifest

METRICS = 'train.eval_metrics=[{name="bpd", limit=8, batch_size=4, timesteps_per_batch=10}, {name="fid", num_samples=8}]'


def run_with_evaluation(run, steps, *extra):
    return cli("run", str(TINY), "--run-dir", str(run), "--set", f"train.steps={steps}", "--set",
                    "train.eval_every=2", "--set", METRICS, "--set", "train.ema_decay=0.5", "--set",
                    "train.checkpoint_every=2", "--no-sample", "--no-eval", *extra)


def evaluations(run):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "eval" in r]


@pytest.mark.slow
@pytest.mark.parametrize("mode,pick", [("min", min), ("max", max)])
def test_training_evaluates_at_its_steps_and_keeps_the_best_across_a_resume(tmp_path, mode, pick):
    run = tmp_path / "run"
    best = ["--set", 'train.best_metric="fid"', "--set", f'train.best_mode="{mode}"']
    result = run_with_evaluation(run, 4, *best)
    assert result.returncode == 0, result.stderr
    assert [e["step"] for e in evaluations(run)] == [2, 4]
    result = run_with_evaluation(run, 6, *best, "--resume", "latest")  # train longer: the history goes on
    assert result.returncode == 0, result.stderr
    entries = evaluations(run)
    assert [e["step"] for e in entries] == [2, 4, 6]
    assert all(e["eval"]["bpd_images"] == 8 and e["eval"]["fid_samples"] == 8 for e in entries)
    fids = {e["step"]: e["eval"]["fid"] for e in entries}
    assert len(set(fids.values())) == 3  # the EMA weights moved between evaluations
    record = json.loads((run / "checkpoints" / "best" / "best.json").read_text())
    assert record["value"] == pick(fids.values()) and fids[record["step"]] == record["value"]
    assert verify_manifest(run / "checkpoints" / "best") is None  # a complete training state
    for step in (2, 4, 6):
        assert (run / "eval" / "during-training" / f"step_{step:07d}" / "bpd_terms.npy").is_file()
    assert not (run / "eval" / "metrics.json").exists()  # the final evaluation is separate (--no-eval here)


@pytest.mark.parametrize("override,message", [
    (["train.best_metric=\"fid\""], "best_metric needs eval_every > 0"),
    (["train.log_with=[\"comet_ml\"]"], "tracker 'comet_ml' is not installed"),
    (["train.log_with=[\"tensorbord\"]"], "train.log_with"),
])
def test_bad_monitoring_settings_are_one_line_errors(tmp_path, override, message):
    args = set_args(override)
    result = cli("run", str(TINY), "--run-dir", str(tmp_path / "r"), *args, "--set", "train.steps=1")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
