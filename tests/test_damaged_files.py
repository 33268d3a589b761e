"""Damaged files, one at a time, on a copy of a finished run and on private caches: caches are
rebuilt with a message and give the same figures; weights that are not what training wrote are
refused in one line that says how to write them again; never a traceback, never a silently wrong
result. (docs/reliability.md holds the corpus as a table.)"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import cli

pytestmark = pytest.mark.slow


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())


def poke(path: Path) -> None:
    """64 random bytes written into the middle: same size, other content."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = np.random.default_rng(1).integers(0, 256, 64, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


DAMAGE = {"truncated": truncate, "garbage": garbage, "64 bytes overwritten": poke, "deleted": Path.unlink}


@pytest.fixture
def private_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DDPM_KIT_DATA_STORE", raising=False)
    return tmp_path / "cache"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "64 bytes overwritten"])
@pytest.mark.parametrize("name,flags", [("ema", []), ("model", ["--raw"])])
def test_final_weights_that_training_did_not_write_are_refused_in_one_line(run_copy, name, flags, damage):
    weights = run_copy / "model" / f"{name}.safetensors"
    DAMAGE[damage](weights)
    result = cli("sample", str(run_copy), "-n", "2", *flags)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"error: {weights}: file {name}.safetensors does not match its checksum (truncated or corrupt): not the "
        f"weights training wrote; write them again from the latest checkpoint: delete {run_copy / 'model'} and run "
        f"`ddpm-kit run {run_copy / 'recipe.toml'} --run-dir {run_copy} --resume latest`")


def test_the_advice_for_damaged_weights_writes_the_same_weights_again(run_copy, fresh_accelerate_state):
    good = (run_copy / "model" / "ema.safetensors").read_bytes()
    poke(run_copy / "model" / "ema.safetensors")
    shutil.rmtree(run_copy / "model")
    result = cli("run", str(run_copy / "recipe.toml"), "--run-dir", str(run_copy), "--resume", "latest",
                 "--no-sample", "--no-eval", threads=1)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout and "from step 8" in result.stdout
    assert (run_copy / "model" / "ema.safetensors").read_bytes() == good


def test_a_damaged_summary_or_log_line_is_set_aside_and_the_command_works(run_copy):
    (run_copy / "summary.json").write_bytes(b"\xff\xfe not json")
    with (run_copy / "metrics.jsonl").open("ab") as f:
        f.write(b'{"step": 9, "loss": 0.1\n\x00\x01garbage\n')
    result = cli("sample", str(run_copy), "-n", "2", "--name", "again")
    assert result.returncode == 0, result.stderr
    assert "summary.json was damaged (not a JSON object); moved to summary.damaged.json" in result.stderr
    assert json.loads((run_copy / "summary.json").read_text())["sample_seconds"] >= 0
    from ddpm_kit.runs import RunFolder

    assert [m["step"] for m in RunFolder(run_copy).read_metrics()] == [2, 4, 6, 8]  # the damaged lines skipped


def bpd_of(run: Path) -> float:
    result = cli("evaluate", str(run), "--metric", "bpd", "--limit", "4")
    assert result.returncode == 0, result.stderr
    return json.loads((run / "eval" / "bpd.json").read_text())["bpd"], result.stderr


@pytest.mark.parametrize("file,damage", [("pixels.u8", "truncated"), ("pixels.u8", "deleted"),
                                         ("meta.json", "garbage"), ("meta.json", "truncated")])
def test_a_damaged_data_store_is_rebuilt_with_a_message_and_the_same_figures(run_copy, private_caches, file, damage):
    before, _ = bpd_of(run_copy)
    stores = sorted(p.parent for p in (private_caches / "data-store").glob("*/meta.json"))
    assert stores  # the digits' splits were prepared into the private store
    for store in stores:
        DAMAGE[damage](store / file)
    after, stderr = bpd_of(run_copy)
    assert after == before
    assert f"warning: data store {stores[0]} was damaged" in stderr and "rebuilding it" in stderr


def fid_of(run: Path) -> tuple[float, str]:
    result = cli("evaluate", str(run), "--metric", "fid")
    assert result.returncode == 0, result.stderr
    return json.loads((run / "eval" / "fid.json").read_text())["fid"], result.stderr


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_classifier_cache_is_trained_again_with_a_message_and_the_same_figures(run_copy, private_caches,
                                                                                          damage):
    before, _ = fid_of(run_copy)
    (cached,) = (private_caches / "feature-nets").glob("classifier-*.safetensors")
    DAMAGE[damage](cached)
    after, stderr = fid_of(run_copy)
    assert after == before and f"warning: cached classifier {cached} is damaged" in stderr


def test_damaged_feature_statistics_are_computed_again_with_the_same_figures(run_copy, private_caches):
    before, _ = fid_of(run_copy)
    stats = sorted((private_caches / "feature-nets").glob("*.npz"))
    assert stats
    for path in stats:
        truncate(path)
    after, _ = fid_of(run_copy)
    assert after == before


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_samples_under_evaluate_are_named_with_the_command_that_writes_them(run_copy, damage):
    """A damaged samples/final.npz is the run's file, not the metric's fault: one line naming it and
    the command that writes it again (exit 2), never a plugin's failure."""
    samples = run_copy / "samples" / "final.npz"
    DAMAGE[damage](samples)
    result = cli("evaluate", str(run_copy), "--metric", "fid")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "plugin" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {samples}: damaged (")
    assert line.endswith(f"; write it again with `ddpm-kit sample {run_copy} --name final`")
    assert cli("sample", str(run_copy)).returncode == 0  # ... and that command does
    assert cli("evaluate", str(run_copy), "--metric", "fid").returncode == 0


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_metrics_file_under_report_is_named_with_the_command_that_writes_it(run_copy, damage, tmp_path):
    results = run_copy / "eval" / "metrics.json"
    DAMAGE[damage](results)
    result = cli("report", str(run_copy), "--out", str(tmp_path / "report"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith(f"error: {results}: damaged (")
    assert result.stderr.strip().endswith(f"; write it again with `ddpm-kit evaluate {run_copy}`")
    assert cli("evaluate", str(run_copy)).returncode == 0
    assert cli("report", str(run_copy), "--out", str(tmp_path / "report")).returncode == 0
