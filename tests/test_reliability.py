"""Reliability: damaged checkpoints, unsafe pickles, NaNs, Ctrl-C, bad data."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from ddpm_kit.errors import DdpmKitError
from ddpm_kit.runs import write_manifest
from helpers import ENV, TINY, ddpm_kit
from test_engine import assert_same_weights, weights

pytestmark = pytest.mark.slow
QUIET = ["--no-sample", "--no-eval"]


def test_damaged_latest_checkpoint_is_skipped_and_resume_is_exact(tmp_path):
    reference = tmp_path / "reference"
    assert ddpm_kit("run", str(TINY), "--run-dir", str(reference), "--set", "train.steps=8", *QUIET).returncode == 0
    run = tmp_path / "run"
    args = ["--set", "train.keep_checkpoints=3", *QUIET]
    assert ddpm_kit("run", str(TINY), "--run-dir", str(run), "--set", "train.steps=6", *args).returncode == 0
    damaged = run / "checkpoints" / "step_0000006" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])  # truncated
    partial = run / "checkpoints" / ".tmp-step_0000008"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half a file")
    result = ddpm_kit("run", str(TINY), "--run-dir", str(run), "--resume", "latest", "--set", "train.steps=8", *args)
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert "step_0000006: skipped, file model.safetensors does not match its checksum" in out
    assert "resuming" in out and "from step 4" in out
    assert_same_weights(weights(reference), weights(run))


def test_checkpoint_with_a_code_running_pickle_is_refused(tmp_path):
    run = tmp_path / "run"
    assert ddpm_kit("run", str(TINY), "--run-dir", str(run), "--set", "train.steps=2", *QUIET).returncode == 0
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    checkpoint = run / "checkpoints" / "step_0000002"
    (checkpoint / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Payload()))
    (checkpoint / "manifest.json").unlink()
    write_manifest(checkpoint, 2)  # the attacker also fixed the manifest
    result = ddpm_kit("run", str(TINY), "--run-dir", str(run), "--resume", "latest", "--set", "train.steps=4", *QUIET)
    assert result.returncode == 2
    assert "custom_checkpoint_0.pkl: refusing to load" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


def test_non_finite_gradient_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    args = ["--set", "train.steps=6", "--set", "train.lr=1e30", "--set", "train.checkpoint_every=1", *QUIET]
    result = ddpm_kit("run", str(TINY), "--run-dir", str(run), *args)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "non-finite loss or gradient at step" in line and "the last good checkpoint is" in line
    step = int(line.split("at step ")[1].split(";")[0])
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept[-1] == f"step_{step - 1:07d}"
    skip = tmp_path / "skip"
    result = ddpm_kit("run", str(TINY), "--run-dir", str(skip), *args, "--set", 'train.on_nonfinite="skip"')
    assert result.returncode == 0, result.stderr
    metrics = [json.loads(line) for line in (skip / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["skipped_steps"] >= 1


def test_ctrl_c_writes_a_checkpoint_and_the_run_resumes_exactly(tmp_path):
    args = ["--set", "train.steps=40", "--set", "train.checkpoint_every=20", *QUIET]
    reference = tmp_path / "reference"
    assert ddpm_kit("run", str(TINY), "--run-dir", str(reference), *args).returncode == 0
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "ddpm_kit", "run", str(TINY), "--run-dir", str(run), *args],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted after step" in err and "--resume latest" in err
    step = int(err.split("interrupted after step ")[1].split(";")[0])
    assert (run / "checkpoints" / f"step_{step:07d}" / "manifest.json").is_file()
    assert step < 40
    result = ddpm_kit("run", str(TINY), "--run-dir", str(run), "--resume", "latest", *args)
    assert result.returncode == 0, result.stderr
    assert_same_weights(weights(reference), weights(run))


@pytest.mark.parametrize("case", ["corrupt image", "empty folder"])
def test_bad_image_folders_are_named(tmp_path, registry, case):
    from ddpm_kit.data import to_uint8_tensor

    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    if case == "empty folder":
        with pytest.raises(DdpmKitError, match="holds no images"):
            registry.build("dataset", "imagefolder", {"path": str(folder)})
        return
    for i in range(4):
        Image.fromarray(np.full((6, 6, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "9.png").write_bytes((folder / "0.png").read_bytes()[:40])  # truncated
    d = registry.build("dataset", "imagefolder", {"path": str(folder), "test_fraction": 0.2})
    with pytest.raises(DdpmKitError, match=r"9\.png: cannot read image"):
        for split in ("train", "test"):
            to_uint8_tensor(d[split], 8, 3, "resize")
