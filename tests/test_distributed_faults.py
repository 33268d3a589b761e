"""Faults of multi-process training on this CPU: a rank SIGKILLed at random moments (the launcher
then ends the other) and resumed each time ends bitwise equal to the uninterrupted 2-process run;
a run preempted onto another number of processes (2 -> 1, 1 -> 2) continues the same run within
the tolerance of 2 processes against 1; accelerate launch is tested for real beside torchrun.
scripts/kill_loop.py runs the long version of the kill loop."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from helpers import TINY, assert_same_weights, cli, wait_for, weights
from test_distributed import processes_seen

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from kill_loop import finish, kill_loop, launch, recipe_args  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.launches]
STEPS = 20  # kills after the checkpoints at 4 and 8 leave 12 steps (~0.5 s) to land in
ARGS = recipe_args(STEPS)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted 2-process run, whose rank 1 writes its part of each checkpoint late."""
    run = tmp_path_factory.mktemp("reference") / "run"
    finish(launch(run, ARGS, program=(str(Path(__file__).parent / "late_rank.py"),)))
    assert processes_seen(run, "train")["num_processes"] == 2
    return run


def test_a_checkpoint_holds_every_ranks_state_when_one_rank_writes_late(reference):
    """accelerate's save_state writes each process's random state with no barrier: the checkpoint
    is renamed into place and its manifest written only after every process wrote its files."""
    from ddpm_kit.runs import verify_manifest

    kept = sorted((reference / "checkpoints").glob("step_*"))
    assert [c.name for c in kept] == ["step_0000012", "step_0000016", "step_0000020"]
    for checkpoint in kept:
        listed = json.loads((checkpoint / "manifest.json").read_text())["files"]
        assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(listed) and verify_manifest(checkpoint) is None


def test_a_rank_killed_at_random_moments_resumes_bitwise(reference, tmp_path):
    run = tmp_path / "run"
    kills, out = kill_loop(run, ARGS, STEPS, kills_wanted=2)
    assert len(kills) == 2, f"killed {len(kills)} times (the run was too quick)"
    assert f"resuming {run} from step {kills[-1]}" in out
    steps = [m["step"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert steps == list(range(2, STEPS + 1, 2))  # every step logged once across the kills
    assert_same_weights(weights(reference), weights(run))
    assert_same_weights(weights(reference, "ema"), weights(run, "ema"))


def interrupted_copy(reference: Path, tmp_path: Path, step: int) -> Path:
    """The reference run as it was at ``step``: its checkpoints up to there, no final weights."""
    run = Path(shutil.copytree(reference, tmp_path / "preempted"))
    shutil.rmtree(run / "model")
    for checkpoint in (run / "checkpoints").glob("step_*"):
        if int(checkpoint.name.split("_")[1]) > step:
            shutil.rmtree(checkpoint)
    return run


def test_a_2_process_run_resumed_on_1_process_continues_the_same_run(reference, tmp_path, fresh_accelerate_state):
    run = interrupted_copy(reference, tmp_path, 12)
    result = cli("run", str(TINY), "--run-dir", str(run), *ARGS, "--resume", "latest", threads=1)
    assert result.returncode == 0, result.stderr
    assert f"resuming {run} from step 12" in result.stdout
    assert processes_seen(run, "train")["num_processes"] == 1
    assert_same_weights(weights(reference), weights(run), atol=1e-5)  # 2 processes vs 1: test_distributed's bound


def test_a_1_process_run_resumed_on_2_processes_by_accelerate_launch_continues_the_same_run(reference, tmp_path,
                                                                                           fresh_accelerate_state):
    run = tmp_path / "run"
    result = cli("run", str(TINY), "--run-dir", str(run), "--set", "train.steps=8", *ARGS[2:], threads=1)
    assert result.returncode == 0, result.stderr
    out = finish(launch(run, [*ARGS, "--resume", "latest"], launcher="accelerate"))
    assert f"resuming {run} from step 8" in out
    seen = processes_seen(run, "train")
    assert (seen["num_processes"], seen["launcher"], seen["distributed_type"]) == (2, "accelerate launch", "MULTI_CPU")
    assert_same_weights(weights(reference), weights(run), atol=1e-5)


@pytest.mark.parametrize("targets", ["launcher", "every process"])
def test_sigterm_stops_every_rank_after_one_step_with_a_checkpoint_whatever_log_every_is(tmp_path, targets):
    """What a preempted cluster job gets. "launcher": torchrun forwards SIGTERM to its workers.
    "every process": what SLURM's --signal and scancel do, the launcher and each worker signalled
    at once, so each worker gets SIGTERM twice (SLURM's and the launcher's forwarded one). Either
    way the ranks agree on the step (between any two steps: log_every is larger than the run),
    checkpoint it and exit 143 each (torchrun itself then exits 1)."""
    import signal
    import time

    import psutil

    run = tmp_path / "run"
    proc = launch(run, [*ARGS, "--set", "train.log_every=1000"])
    wait_for(run / "checkpoints" / "step_0000004" / "manifest.json", proc, timeout=120)  # training, past the imports
    workers = psutil.Process(proc.pid).children()
    assert len(workers) == 2, workers
    for target in [proc.pid, *(w.pid for w in workers)] if targets == "every process" else [proc.pid]:
        os.kill(target, signal.SIGTERM)
    signalled = time.time()
    _, err = proc.communicate(timeout=120)
    said = [line for line in err.splitlines() if line.startswith("error: stopped by SIGTERM after step ")]
    assert len(said) == 2, err[-2000:]  # both ranks
    steps = {int(line.split("after step ")[1].split(";")[0]) for line in said}
    assert len(steps) == 1 and "(exit status 143)" in said[0]
    (step,) = steps
    assert 4 <= step < STEPS, step
    assert (run / "checkpoints" / f"step_{step:07d}" / "manifest.json").is_file()
    assert time.time() - signalled < 25, "the launcher waited for its shutdown timeout"


def test_non_finite_fp16_training_stops_every_rank_at_the_same_step(tmp_path):
    """Two processes under fp16 with grad_accum 2 and lr = 1e30: the ranks agree (one all-reduce)
    on the step whose loss went non-finite and stop there together, instead of one waiting forever."""
    run = tmp_path / "run"
    proc = launch(run, [*recipe_args(6, checkpoint_every=1), "--set", "train.lr=1e30", "--set", "train.grad_accum=2",
                        "--set", 'train.mixed_precision="fp16"'])
    _, err = proc.communicate(timeout=300)
    said = [line for line in err.splitlines() if "non-finite loss or gradient at step" in line]
    assert proc.returncode != 0 and len(said) == 2, err[-2000:]
    assert len({line.split("at step ")[1].split(";")[0] for line in said}) == 1


def test_two_torchrun_nodes_on_one_machine_train_as_the_2_process_run(reference, tmp_path):
    """The multi-node form users write for a cluster (--nnodes 2, --node_rank 0/1, one process each)
    started here on 127.0.0.1: one 2-process job, bitwise the single-node 2-process run."""
    import subprocess

    from helpers import ENV
    from kill_loop import TINY as RECIPE, free_port

    run, port = tmp_path / "run", free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                               "-m", "ddpm_kit", "run", str(RECIPE), "--run-dir", str(run), *ARGS],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for node in nodes:
        finish(node)
    seen = processes_seen(run, "train")
    assert (seen["num_processes"], seen["launcher"]) == (2, "torchrun")
    assert_same_weights(weights(reference), weights(run))
