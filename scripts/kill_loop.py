"""The kill loop of docs/reliability.md, long version: a 2-process CPU run of the tiny recipe
(torchrun, or accelerate launch), one random rank SIGKILLed at a random moment after each new
checkpoint (the launcher then ends the other), resumed each time with --resume latest, until it
completes; then compared with the uninterrupted 2-process run. tests/test_distributed_faults.py
runs a short version (2 kills) with the same functions.

    .venv/bin/python scripts/kill_loop.py --steps 120 --kills 10          # prints kills, max |diff|
    .venv/bin/python scripts/kill_loop.py --launcher accelerate --kills 3
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "ddpm_kit" / "testing" / "tiny.toml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def recipe_args(steps: int, checkpoint_every: int = 4) -> list[str]:
    """The tiny recipe for ``steps`` steps; no attention block (its key bias has an exactly zero
    gradient, whose rounding noise Adam scales up to lr-sized steps between process counts)."""
    return ["--set", f"train.steps={steps}", "--set", f"train.checkpoint_every={checkpoint_every}",
            "--set", "train.log_every=2", "--set", "train.keep_checkpoints=3", "--set", "backbone.add_attention=false",
            "--no-sample", "--no-eval"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(run: Path, args: list[str], launcher: str = "torchrun", processes: int = 2,
           program: tuple[str, ...] = ("-m", "ddpm_kit")) -> subprocess.Popen:
    """``ddpm-kit run`` of the tiny recipe on ``processes`` CPU processes (``program``: what runs
    the command line, e.g. a script that wraps it)."""
    if launcher == "torchrun":
        head = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1",
                "--master_port", str(free_port())]
    else:  # accelerate launch --multi_gpu starts P processes on a CPU machine too (docs/training.md)
        head = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port())]
    return subprocess.Popen([sys.executable, *head, *program, "run", str(TINY), "--run-dir", str(run), *args],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"launch failed ({proc.returncode}): {err[-3000:]}")
    return out


def newest_checkpoint(run: Path) -> int:
    done = [int(p.parent.name.split("_")[1]) for p in (run / "checkpoints").glob("step_*/manifest.json")]
    return max(done, default=0)


def kill_loop(run: Path, args: list[str], steps: int, kills_wanted: int, launcher: str = "torchrun",
              max_delay: float = 0.15, seed: int | None = None) -> tuple[list[int], str]:
    """Launch, resume after each kill, until the run completes: while fewer than ``kills_wanted``
    kills happened, wait for one more checkpoint, then SIGKILL a random rank at a random moment.
    The newest checkpoint after each kill, and the completing launch's output."""
    rng = random.Random(time.time_ns() if seed is None else seed)
    kills: list[int] = []
    while True:
        proc = launch(run, [*args, *(["--resume", "latest"] if kills else [])], launcher)
        if len(kills) < kills_wanted:
            target, deadline = newest_checkpoint(run) + 1, time.time() + 300
            while newest_checkpoint(run) < target and proc.poll() is None:
                if time.time() > deadline:
                    raise TimeoutError("no new checkpoint in 300 s")
                time.sleep(0.005)
            time.sleep(rng.uniform(0, max_delay))  # ~0 to 3 steps of this run
            workers = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
            workers = [w for w in workers if "ddpm_kit" in " ".join(_cmdline(w))]
            if len(workers) == 2 and newest_checkpoint(run) < steps:
                rng.choice(workers).kill()  # SIGKILL one rank; the launcher ends the other
                proc.communicate(timeout=300)
                if proc.returncode == 0:
                    raise RuntimeError("a launch whose rank was killed exited 0")
                kills.append(newest_checkpoint(run))
                continue
        return kills, finish(proc)


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def max_difference(a: Path, b: Path, name: str = "model") -> float:
    from safetensors.torch import load_file

    from ddpm_kit.runs import RunFolder

    x, y = (load_file(str(RunFolder(r).weights_file(name == "ema"))) for r in (a, b))
    assert x.keys() == y.keys()
    return max((x[k] - y[k]).abs().max().item() for k in x)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--launcher", choices=["torchrun", "accelerate"], default="torchrun")
    args = parser.parse_args(argv)
    every = max(2, args.steps // (args.kills + 2))
    with tempfile.TemporaryDirectory() as tmp:
        reference, run = Path(tmp) / "reference", Path(tmp) / "run"
        finish(launch(reference, recipe_args(args.steps, every), args.launcher))
        kills, _ = kill_loop(run, recipe_args(args.steps, every), args.steps, args.kills, args.launcher)
        result = {"launcher": args.launcher, "steps": args.steps, "checkpoint_every": every, "kills": len(kills),
                  "checkpoints_at_kills": kills, "max_abs_difference": max_difference(reference, run),
                  "max_abs_difference_ema": max_difference(reference, run, "ema")}
    print(result)
    return result


if __name__ == "__main__":
    main()
