"""The cluster path for real: a one-node SLURM cluster on this machine (scripts/slurm_cluster.sh:
munged, slurmctld and slurmd, started with the session and stopped after the last job, even when a
test fails) runs docs/training.md's job script, scripts/slurm/train.sbatch, as written: 2 tasks, each
`accelerate launch` as one machine of two (1 CPU process each; the machine rank from
$SLURM_PROCID, the main address from the job's node list).

Every scenario ends bitwise equal to the same recipe under torchrun with 2 processes on one node:
an uninterrupted job; a job preempted by SIGTERM to its step (what --signal=TERM@N and a
preempting scheduler send) that requeues itself; a job requeued from outside (scontrol requeue);
a job cancelled mid-step (scancel) and submitted again; a job one of whose workers is SIGKILLed.
SLURM holds a requeued job until the credential of its previous start expires (cred_expire: 120 s
by default, 5 s on the test cluster). The module's work starts with the test session, in threads,
its processes in the background (conftest's ``started_with_the_session``: they fill the core the
other tests leave idle); the torchrun reference and the scenarios run two at a time, each with a
job of its own, sharing the node's CPUs (--oversubscribe)."""

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

import psutil
import pytest

from helpers import ENV, assert_same_weights, in_the_background, wait_for, weights

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from kill_loop import finish, free_port, launch, recipe_args  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm" / "train.sbatch"
CLUSTER = ROOT / "scripts" / "slurm_cluster.sh"
pytestmark = [pytest.mark.slow, pytest.mark.slurm]
STEPS = 60  # about 2 s of training: time to signal a job between its checkpoints (every 4 steps)
ARGS = recipe_args(STEPS)


class Cluster:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.env = {**ENV, "SLURM_CONF": str(folder / "slurm.conf"),
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def command(self, *args: str) -> str:
        out = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"{' '.join(args)}: {out.stderr}"
        return out.stdout

    def submit(self, run: Path, *options: str) -> str:
        """sbatch the job script for ``run``: 1 node, 2 tasks of 1 process each."""
        env = {"RECIPE": str(ROOT / "ddpm_kit" / "testing" / "tiny.toml"), "RUN": str(run), "PROCS": "1",
               "PORT": str(free_port())}
        out = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--time=10", "--oversubscribe",
                              f"--output={run.parent}/job-%j.out", *options, str(SCRIPT), *ARGS],
                             env={**self.env, **env}, capture_output=True, text=True, timeout=60, cwd=run.parent)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def job(self, job: str) -> dict[str, str]:
        """`scontrol show job`'s fields (JobState, Reason, Restarts, ExitCode, ...)."""
        return dict(re.findall(r"(\w+)=(\S*)", self.command("scontrol", "show", "job", "-o", job)))

    def wait(self, job: str, *states: str, timeout: float = 300) -> dict[str, str]:
        deadline = time.time() + timeout
        while (fields := self.job(job))["JobState"] not in states:
            assert time.time() < deadline, f"job {job} still {fields['JobState']} ({fields.get('Reason')})"
            time.sleep(0.2)
        return fields

    def log(self, job: str, run: Path) -> str:
        return (run.parent / f"job-{job}.out").read_text()


def start_cluster(folder: Path) -> Cluster:
    starting = subprocess.Popen(["bash", str(CLUSTER), "start", str(folder)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    in_the_background(starting.pid)  # before it installs or starts anything
    _, stderr = starting.communicate(timeout=900)
    if starting.returncode != 0:  # CI has root and the package registry: a cluster that fails to start fails
        stop_cluster(folder)
        pytest.fail(f"the SLURM test cluster did not start: {stderr[-2000:]}")
    return Cluster(folder)


def stop_cluster(folder: Path) -> list[str]:
    """Stop the daemons; the names of any left running."""
    subprocess.run(["bash", str(CLUSTER), "stop", str(folder)], capture_output=True, timeout=120)
    return [p.info["name"] for p in psutil.process_iter(["name"]) if p.info["name"] in ("slurmctld", "slurmd")]


def torchrun_reference(folder: Path) -> Path:
    """The same recipe under torchrun: 2 processes on one node, uninterrupted."""
    run = folder / "run"
    started = launch(run, ARGS)
    in_the_background(started.pid)
    finish(started)
    return run


def wait_for_checkpoint(run: Path, step: int) -> None:
    wait_for(run / "checkpoints" / f"step_{step:07d}" / "manifest.json")


def stopped_step(log: str) -> int:
    """The step both ranks stopped after on SIGTERM (the same for both)."""
    said = re.findall(r"stopped by SIGTERM after step (\d+); checkpoint saved", log)
    assert len(said) == 2 and len(set(said)) == 1, log[-3000:]
    return int(said[0])


def assert_resumed_to_the_reference(cluster, job, run, reference: Future, step=None) -> str:
    fields = cluster.wait(job, "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
    log = cluster.log(job, run)
    assert fields["JobState"] == "COMPLETED", log[-3000:]
    if step is not None:
        assert f"resuming {run} from step {step}" in log, log[-3000:]
    assert_same_weights(weights(reference.result()), weights(run))
    assert_same_weights(weights(reference.result(), "ema"), weights(run, "ema"))
    return log


# -- the scenarios: each submits its own job and asserts what it saw ---------------------------------
def uninterrupted(cluster, reference, run):
    job = cluster.submit(run)
    log = assert_resumed_to_the_reference(cluster, job, run, reference)
    assert "2 machines x 1 processes, main localhost" in log
    assert cluster.job(job)["Restarts"] == "0"
    summary = json.loads((run / "summary.json").read_text())["train_processes"]
    assert (summary["num_processes"], summary["launcher"]) == (2, "accelerate launch")


def signalled(cluster, reference, run):
    """SIGTERM to every process of the job step (the launchers and the workers, as --signal=TERM@N
    does): both ranks stop after the same step with its checkpoint, the script requeues the job,
    and the requeued job resumes from that step."""
    job = cluster.submit(run)
    wait_for_checkpoint(run, 4)
    cluster.command("scancel", "--signal=TERM", job)
    cluster.wait(job, "PENDING")
    step = stopped_step(cluster.log(job, run))
    assert (run / "checkpoints" / f"step_{step:07d}" / "manifest.json").is_file() and 4 <= step < STEPS
    assert "no final weights yet" in cluster.log(job, run)
    assert_resumed_to_the_reference(cluster, job, run, reference, step)
    assert cluster.job(job)["Restarts"] == "1"


def requeued(cluster, reference, run):
    job = cluster.submit(run)
    wait_for_checkpoint(run, 4)
    cluster.command("scontrol", "requeue", job)
    log = assert_resumed_to_the_reference(cluster, job, run, reference)
    assert re.search(rf"resuming {run} from step \d+", log), log[-3000:]
    assert cluster.job(job)["Restarts"] == "1"


def cancelled(cluster, reference, run):
    from ddpm_kit.runs import verify_manifest

    job = cluster.submit(run)
    wait_for_checkpoint(run, 4)
    cluster.command("scancel", job)
    assert cluster.wait(job, "CANCELLED")["JobState"] == "CANCELLED"
    kept = sorted((run / "checkpoints").glob("step_*"))
    assert kept and all(verify_manifest(c) is None for c in kept), kept  # complete, or named .tmp- and skipped
    last = int(kept[-1].name.split("_")[1])
    again = cluster.submit(run)
    assert_resumed_to_the_reference(cluster, again, run, reference, last)


def worker_killed(cluster, reference, run):
    """SIGKILL to the second machine's worker: srun --kill-on-bad-exit ends the other task, the
    script requeues the job, which resumes from the last complete checkpoint."""
    job = cluster.submit(run)
    wait_for_checkpoint(run, 4)
    workers = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] and str(run) in p.info["cmdline"]
               and "ddpm_kit" in p.info["cmdline"] and not any("accelerate" in a for a in p.info["cmdline"][:3])]
    assert len(workers) == 2, [w.info["cmdline"] for w in workers]
    workers[-1].kill()
    cluster.wait(job, "PENDING")
    assert "no final weights yet" in cluster.log(job, run)
    log = assert_resumed_to_the_reference(cluster, job, run, reference)
    assert re.search(rf"resuming {run} from step \d+", log), log[-3000:]
    assert cluster.job(job)["Restarts"] == "1"


SCENARIOS = (uninterrupted, signalled, requeued, cancelled, worker_killed)


class Background:
    """The cluster, the torchrun reference and every scenario in threads, two at a time (the
    jobs share the node's CPUs: --oversubscribe); the cluster stops when the last scenario ends,
    even when one fails. ``outcomes``: each scenario's future; ``stopped``: the daemons left."""

    def __init__(self, tmp_path_factory) -> None:
        folder, reference = tmp_path_factory.mktemp("slurm"), tmp_path_factory.mktemp("torchrun")
        runs = {s.__name__: tmp_path_factory.mktemp(s.__name__) / "job" / "run" for s in SCENARIOS}
        self.pool, self.stopper = ThreadPoolExecutor(2), ThreadPoolExecutor(1)
        cluster = self.pool.submit(start_cluster, folder)
        self.reference = self.pool.submit(torchrun_reference, reference)
        self.outcomes = {name: self.pool.submit(self._scenario, scenario, cluster, runs[name])
                         for scenario, name in zip(SCENARIOS, runs)}
        self.stopped = self.stopper.submit(self._stop_after_all, folder)

    def _scenario(self, scenario, cluster: Future, run: Path) -> None:
        run.parent.mkdir()
        scenario(cluster.result(), self.reference, run)

    def _stop_after_all(self, folder: Path) -> list[str]:
        wait([self.reference, *self.outcomes.values()])
        return stop_cluster(folder)

    def close(self) -> None:
        self.stopper.shutdown(wait=True)
        self.pool.shutdown(wait=True)


def start_in_background(request) -> Background:
    """Called by conftest's ``started_with_the_session`` when the session starts (this module's tests selected)."""
    return Background(request.getfixturevalue("tmp_path_factory"))


@pytest.fixture(scope="module")
def outcomes(background) -> dict[str, Future]:
    return background[__name__].outcomes


def test_a_two_task_job_trains_as_torchrun_on_one_node(outcomes):
    outcomes["uninterrupted"].result()


def test_a_job_signalled_before_its_time_limit_checkpoints_requeues_itself_and_resumes(outcomes):
    outcomes["signalled"].result()


def test_a_job_requeued_from_outside_resumes(outcomes):
    outcomes["requeued"].result()


def test_a_cancelled_job_leaves_no_half_checkpoint_and_the_next_job_resumes(outcomes):
    outcomes["cancelled"].result()


def test_a_job_whose_worker_is_killed_fails_over_to_a_resume(outcomes):
    outcomes["worker_killed"].result()


def test_the_cluster_stops_when_its_jobs_end_and_leaves_no_daemon(background):
    assert background[__name__].stopped.result() == []
