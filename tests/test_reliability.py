"""Reliability: damaged checkpoints, unsafe pickles, NaNs, Ctrl-C, bad data."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from ddpm_kit.errors import DdpmKitError
from ddpm_kit.runs import write_manifest
from helpers import ENV, TINY, Scenarios, assert_same_weights, cli, popen, wait_for, weights

pytestmark = pytest.mark.slow
QUIET = ["--no-sample", "--no-eval"]
SIGNALLED = ["--set", "train.steps=40", "--set", "train.checkpoint_every=20", "--set", "train.log_every=1", *QUIET]


@pytest.fixture(scope="module")
def eight_steps(tmp_path_factory):
    """The tiny recipe trained 8 steps without a break: where a resumed run must end (read only)."""
    reference = tmp_path_factory.mktemp("eight-steps") / "run"
    assert cli("run", str(TINY), "--run-dir", str(reference), "--set", "train.steps=8", *QUIET).returncode == 0
    return reference


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The run the signalled ones below make, without a signal (one thread, as they compute; read only)."""
    reference = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert cli("run", str(TINY), "--run-dir", str(reference), *SIGNALLED, threads=1).returncode == 0
    return reference


def test_damaged_latest_checkpoint_is_skipped_and_resume_is_exact(tmp_path, eight_steps):
    reference = eight_steps
    run = tmp_path / "run"
    args = ["--set", "train.keep_checkpoints=3", *QUIET]
    assert cli("run", str(TINY), "--run-dir", str(run), "--set", "train.steps=6", *args).returncode == 0
    damaged = run / "checkpoints" / "step_0000006" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])  # truncated
    partial = run / "checkpoints" / ".tmp-step_0000008"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half a file")
    result = cli("run", str(TINY), "--run-dir", str(run), "--resume", "latest", "--set", "train.steps=8", *args)
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert "step_0000006: skipped, file model.safetensors does not match its checksum" in out
    assert f"resuming {run} from step 4" in out
    assert [m["step"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [2, 4, 6, 8]
    assert_same_weights(weights(reference), weights(run))


def test_a_resumed_run_really_uses_its_checkpoint(tmp_path, eight_steps):
    """Training is deterministic, so a resume that silently started over would end at the same
    weights: halve the weights inside the checkpoint (and rewrite its manifest, so it is accepted)
    and the resumed run must end elsewhere, while the untouched checkpoint ends where the
    uninterrupted run does (the test above)."""
    from ddpm_kit.runs import MANIFEST, write_manifest
    from safetensors.torch import load_file, save_file

    reference = eight_steps
    run = tmp_path / "run"
    assert cli("run", str(TINY), "--run-dir", str(run), "--set", "train.steps=4", *QUIET).returncode == 0
    checkpoint = run / "checkpoints" / "step_0000004"
    state = load_file(str(checkpoint / "model.safetensors"))
    save_file({k: v / 2 for k, v in state.items()}, str(checkpoint / "model.safetensors"))
    (checkpoint / MANIFEST).unlink()
    write_manifest(checkpoint, 4)
    shutil.rmtree(run / "model")
    result = cli("run", str(TINY), "--run-dir", str(run), "--resume", "latest", "--set", "train.steps=8", *QUIET)
    assert result.returncode == 0, result.stderr
    assert f"resuming {run} from step 4" in result.stdout
    ours, theirs = weights(run), weights(reference)
    assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) > 1e-3


def test_checkpoint_with_a_code_running_pickle_is_refused(tmp_path):
    run = tmp_path / "run"
    assert cli("run", str(TINY), "--run-dir", str(run), "--set", "train.steps=2", *QUIET).returncode == 0
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    checkpoint = run / "checkpoints" / "step_0000002"
    (checkpoint / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Payload()))
    (checkpoint / "manifest.json").unlink()
    write_manifest(checkpoint, 2)  # the attacker also fixed the manifest
    result = cli("run", str(TINY), "--run-dir", str(run), "--resume", "latest", "--set", "train.steps=4", *QUIET)
    assert result.returncode == 2
    assert "custom_checkpoint_0.pkl: refusing to load" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


def test_non_finite_gradient_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    args = ["--set", "train.steps=6", "--set", "train.lr=1e30", "--set", "train.checkpoint_every=1", *QUIET]
    result = cli("run", str(TINY), "--run-dir", str(run), *args)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "non-finite loss or gradient at step" in line and "the last good checkpoint is" in line
    step = int(line.split("at step ")[1].split(";")[0])
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept[-1] == f"step_{step - 1:07d}"
    skip = tmp_path / "skip"
    result = cli("run", str(TINY), "--run-dir", str(skip), *args, "--set", 'train.on_nonfinite="skip"')
    assert result.returncode == 0, result.stderr
    metrics = [json.loads(line) for line in (skip / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["skipped_steps"] >= 1


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_a_non_finite_step_never_reaches_the_weights_the_ema_or_a_checkpoint(tmp_path, monkeypatch, registry,
                                                                            fresh_accelerate_state, policy):
    """The backbone's output turns NaN in the forward of step 4 only (a hook counts training
    forwards); logs and checkpoints are not due then. 'stop' raises at step 4 with the weights and
    the EMA as step 3 left them; 'skip' skips exactly that step and trains on."""
    import torch

    from ddpm_kit.engine import NonFiniteError, Trainer, build_components, training
    from ddpm_kit.engine.components import Components
    from ddpm_kit.recipe import load_recipe
    from ddpm_kit.runs import RunFolder

    bad_step, seen, forwards = 4, {}, []
    build_backbone, make_ema = Components.build_backbone, training.make_ema

    def poisoned_backbone(self):
        net = seen["model"] = build_backbone(self)

        def nan_at_the_bad_step(module, args, output):
            if module.training:
                forwards.append(1)
                if len(forwards) == bad_step:
                    return output * float("nan")
        net.register_forward_hook(nan_at_the_bad_step)
        return net

    monkeypatch.setattr(Components, "build_backbone", poisoned_backbone)
    monkeypatch.setattr(training, "make_ema", lambda *a, **k: seen.setdefault("ema", make_ema(*a, **k)))
    recipe, resolved = load_recipe(TINY, registry, ["train.steps=6", "train.log_every=5", "train.checkpoint_every=3",
                                                    f'train.on_nonfinite="{policy}"', 'data.store_dir="' +
                                                    str(tmp_path / "store") + '"'])
    run = RunFolder(tmp_path / "run")
    run.write_recipe(resolved)
    if policy == "stop":
        with pytest.raises(NonFiniteError, match="at step 4; stopped before applying it"):
            Trainer(build_components(recipe, registry), run).fit()
        assert len(forwards) == bad_step  # stopped at the bad step, not at the next log or checkpoint step
        assert [c.step for c in run.list_checkpoints()] == [3]
    else:
        Trainer(build_components(recipe, registry), run).fit()
        assert len(forwards) == 6 and json.loads(run.metrics_file.read_text().splitlines()[-1])["skipped_steps"] == 1
        assert [c.step for c in run.list_checkpoints()] == [3, 6]
        assert all(torch.isfinite(v).all() for v in weights(run.path, "ema").values())
    assert all(torch.isfinite(p).all() for p in seen["model"].parameters())
    assert all(torch.isfinite(p).all() for p in seen["ema"].shadow_params)


SIGNALS = {"ctrl-c": (signal.SIGINT, 130, "interrupted"), "sigterm": (signal.SIGTERM, 143, "stopped by SIGTERM")}


def signalled(sig: signal.Signals, run) -> tuple[int, str, float]:
    """A run of SIGNALLED sent ``sig`` once it has logged its first step: its exit status, its
    stderr and the seconds it ran."""
    started = time.time()
    proc = popen([sys.executable, "-m", "ddpm_kit", "run", str(TINY), "--run-dir", str(run), *SIGNALLED], env=ENV,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(run / "metrics.jsonl", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err, time.time() - started


@pytest.mark.parametrize("name", SIGNALS)
def test_ctrl_c_or_sigterm_writes_a_checkpoint_and_the_run_resumes_exactly(background, uninterrupted, name):
    """SIGTERM (what SLURM and Kubernetes send before killing a job) acts like Ctrl-C: a checkpoint
    of the last finished step, then the shell's exit status for the signal (a job script requeues
    on 143); resumed, the run loads that step, logs no step twice and ends at the uninterrupted
    run's weights."""
    _, code, said = SIGNALS[name]
    run, (returncode, err, seconds) = background[__name__][name]
    assert returncode == code, err
    assert f"{said} after step" in err and "--resume latest" in err and f"(exit status {code})" in err
    step = int(err.split(f"{said} after step ")[1].split(";")[0])
    assert (run / "checkpoints" / f"step_{step:07d}" / "manifest.json").is_file()
    assert step < 40
    interrupted = json.loads((run / "summary.json").read_text())["train_seconds"]  # the stopped segment counts
    assert 0 < interrupted < seconds
    started = time.time()
    result = cli("run", str(TINY), "--run-dir", str(run), "--resume", "latest", *SIGNALLED, threads=1)
    assert result.returncode == 0, result.stderr
    assert f"resuming {run} from step {step}" in result.stdout
    total = json.loads((run / "summary.json").read_text())["train_seconds"]
    assert interrupted < total < interrupted + (time.time() - started)  # both segments, each once
    assert [m["step"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == \
        list(range(1, 41))
    assert_same_weights(weights(uninterrupted), weights(run))


@pytest.mark.parametrize("case", ["corrupt image", "empty folder"])
def test_bad_image_folders_are_named(tmp_path, registry, case):
    from ddpm_kit.images import to_uint8_tensor

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


def test_resume_without_a_checkpoint_starts_over_and_logs_each_step_once(tmp_path, fresh_accelerate_state):
    """A run interrupted before its first checkpoint (its log already holds steps 2 and 4) resumes
    from step 0, says so, and its metrics.jsonl ends with every logged step once."""
    run = tmp_path / "run"
    common = ["--run-dir", str(run), "--set", "train.checkpoint_every=0", "--no-sample", "--no-eval"]
    assert cli("run", str(TINY), *common, "--set", "train.steps=4").returncode == 0
    (run / "summary.json").unlink()  # as if killed before the end: no checkpoint, no finished training
    result = cli("run", str(TINY), *common, "--set", "train.steps=6", "--resume", "latest")
    assert result.returncode == 0, result.stderr
    assert "no complete checkpoint yet; starting from step 0" in result.stdout
    steps = [m["step"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert steps == [2, 4, 6]


@pytest.mark.parametrize("precision,accum", [("no", 2), ("fp16", 1), ("fp16", 2)])
def test_non_finite_training_does_what_the_recipe_says_under_fp16_and_accumulation(tmp_path, precision, accum,
                                                                                     fresh_accelerate_state):
    """lr = 1e30 blows the weights up after the first step. 'stop' stops at the first step whose
    loss is non-finite (under fp16 an overflowing gradient alone is the scaler's to skip), keeping
    the last good checkpoint; 'skip' finishes, and counts the steps it (or the scaler) skipped."""
    args = ["--set", "train.steps=6", "--set", "train.lr=1e30", "--set", "train.checkpoint_every=1",
            "--set", f'train.mixed_precision="{precision}"', "--set", f"train.grad_accum={accum}",
            "--set", "train.log_every=1", *QUIET]
    run = tmp_path / "stop"
    result = cli("run", str(TINY), "--run-dir", str(run), *args)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "non-finite loss or gradient at step" in line
    step = int(line.split("at step ")[1].split(";")[0])
    assert 2 <= step <= 6 and f"the last good checkpoint is {run / 'checkpoints'}" in line
    skip = tmp_path / "skip"
    result = cli("run", str(TINY), "--run-dir", str(skip), *args, "--set", 'train.on_nonfinite="skip"')
    assert result.returncode == 0, result.stderr
    metrics = [json.loads(line) for line in (skip / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["skipped_steps"] >= 1


LIMITED = ["--set", "train.checkpoint_every=2", *QUIET]
FILE_SIZE_LIMIT = 2 ** 19  # 512 KiB: below the optimizer state (about 1.6 MB), above the small files


def resumed_under_a_file_size_limit(run) -> tuple[dict[str, bytes], subprocess.CompletedProcess]:
    """A full disk, simulated: the run trained 2 steps, then resumed to 4 under a file size limit
    (prlimit; Python ignores SIGXFSZ, so a write past it fails with EFBIG). The checkpoint of step 2
    as it was before, and the resumed run's outcome."""
    command = [sys.executable, "-m", "ddpm_kit", "run", str(TINY), "--run-dir", str(run), *LIMITED]
    first = popen([*command, "--set", "train.steps=2"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                  text=True)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    before = {p.name: p.read_bytes() for p in (run / "checkpoints" / "step_0000002").iterdir()}
    limited = popen(["prlimit", f"--fsize={FILE_SIZE_LIMIT}", *command, "--resume", "latest", "--set", "train.steps=4"],
                    env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = limited.communicate(timeout=300)
    return before, subprocess.CompletedProcess(limited.args, limited.returncode, out, err)


def start_in_background(request) -> Scenarios:
    """The signalled runs and the run under a file size limit, started with the session (conftest's
    ``background``): each scenario returns its run folder and what it saw."""
    folder = request.getfixturevalue("tmp_path_factory").mktemp("background")
    scenarios = {name: lambda sig=sig, run=folder / name: (run, signalled(sig, run))
                 for name, (sig, _, _) in SIGNALS.items()}
    limited = folder / "limited"
    return Scenarios(**scenarios, limited=lambda: (limited, resumed_under_a_file_size_limit(limited)))


def test_a_checkpoint_that_cannot_be_written_leaves_the_previous_one_and_says_so(background):
    """The run stops in one line naming the intact previous checkpoint, which a resume without the
    limit then continues from."""
    run, (before, result) = background[__name__]["limited"]
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: could not write the checkpoint of step 4 to {run / 'checkpoints'} (File too large); "
                           f"{run / 'checkpoints' / 'step_0000002'} (step 2) is intact: free space"), line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000002"]  # no half-written folder
    assert {p.name: p.read_bytes() for p in (run / "checkpoints" / "step_0000002").iterdir()} == before
    result = cli("run", str(TINY), "--run-dir", str(run), "--resume", "latest", "--set", "train.steps=4", *LIMITED)
    assert result.returncode == 0 and f"resuming {run} from step 2" in result.stdout


def test_a_repeated_sigterm_is_one_request_and_a_late_second_ctrl_c_interrupts():
    """Under SLURM a worker gets the scheduler's SIGTERM and the launcher's forwarded one: the
    second must not kill it before its checkpoint. A person pressing Ctrl-C again after the
    patience interval means it."""
    from ddpm_kit.engine import GracefulStop

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.signum == signal.SIGTERM  # still alive, one request
        os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C after a SIGTERM within the patience: no effect
    with GracefulStop() as stop:
        stop.patience = 0.05
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT
        time.sleep(0.1)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # restored
