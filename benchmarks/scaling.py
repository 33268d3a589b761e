"""Data larger than memory, and work on several processes: peak memory and wall time.

    python benchmarks/scaling.py                  # 1k, 10k, 100k images; prints markdown tables
    python benchmarks/scaling.py --sizes 1000     # a quick look
    python benchmarks/scaling.py --device cuda    # the runs on the GPU (2 processes need 2 GPUs)
    python benchmarks/scaling.py --smoke --out /tmp/s.json   # 32 images, 1 process: the harness, seconds
    python benchmarks/scaling.py --parts work --run runs/tiny  # the commands on an existing tiny run

Part 1: synthetic 32x32 RGB datasets of 1k, 10k and 100k images (PNG bytes in parquet files,
loaded through the ``hub`` dataset plugin as a local path, as hub data would be). For each size,
the time to the first training step and the peak memory of the whole process tree, with a cold
store (decoded now) and a warm one (reused), on 1 and 2 processes (torchrun). Each measurement is
a fresh ``ddpm-kit run --set train.steps=1``. Memory is the proportional set size (PSS: shared
pages split among the processes that map them) summed over every process of the run, sampled
every 50 ms: forked decode workers share their parent's pages, so per-process RSS would count
those pages once per worker.

Part 2: ``ddpm-kit sample -n N`` and ``ddpm-kit evaluate`` of one trained tiny run on 1 and 2
processes, alternated over rounds (this VM's speed drifts), medians reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def measure(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak PSS in MB summed over the command's process tree) of one command."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        total = 0
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in tree:
            try:
                total += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        peak = max(peak, total)
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {proc.stderr.read().decode()[-2000:]}")
    return seconds, peak / 2**20


def ddpm_kit(processes: int, *args: str) -> list[str]:
    """The command that runs ``ddpm-kit ARGS`` on ``processes`` processes (torchrun beyond one)."""
    if processes == 1:
        return [sys.executable, "-m", "ddpm_kit", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_port", "29561", "-m", "ddpm_kit", *args]


def make_dataset(folder: Path, n: int) -> None:
    """n random 32x32 RGB PNGs with labels, as parquet shards (what a hub dataset holds)."""
    import io

    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    shard = 10_000
    for start in range(0, n, shard):
        rows = []
        for _ in range(min(shard, n - start)):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
            rows.append({"bytes": buffer.getvalue(), "path": None})
        features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
        part = datasets.Dataset.from_dict({"image": rows, "label": [0] * len(rows)}, features=features)
        part.to_parquet(str(folder / f"train-{start // shard:05d}.parquet"))


def data_rows(sizes: list[int], work: Path, counts: tuple[int, ...], kinds: tuple[str, ...]) -> list[str]:
    rows = ["| images | decoded size | processes | store | time to first step | peak memory (PSS, all processes) |",
            "|---|---|---|---|---|---|"]
    for n in sizes:
        data = work / f"data-{n}"
        make_dataset(data, n)
        for processes in counts:
            store = work / f"store-{n}-{processes}"
            env = {**ENV, "DDPM_KIT_DATA_STORE": str(store), "HF_DATASETS_CACHE": str(work / "hf-cache")}
            for kind in kinds:
                run = work / f"run-{n}-{processes}-{kind}"
                args = ["run", str(ROOT / "recipes" / "quickstart.toml"), "--run-dir", str(run),
                        "--set", f'data.dataset={{name="hub", path="{data}"}}',
                        "--set", "data.image_size=32", "--set", "data.channels=3", "--set", "train.steps=1",
                        "--set", "train.batch_size=64", "--set", "train.checkpoint_every=0",
                        "--no-sample", "--no-eval"]
                seconds, mb = measure(ddpm_kit(processes, *args), env)
                rows.append(f"| {n:,} | {n * 3 * 32 * 32 / 2**20:.0f} MB | {processes} | {kind} | {seconds:.1f} s | "
                            f"{mb:.0f} MB |")
                print(rows[-1], flush=True)
                shutil.rmtree(run)
        shutil.rmtree(data)
    return rows


def work_rows(work: Path, num_images: int, rounds: int, counts: tuple[int, ...], steps: int = 20,
              trained: Path | None = None) -> list[str]:
    """``ddpm-kit sample`` and ``evaluate`` of a trained tiny run on each process count: the run
    ``trained`` (copied: the commands write into it), else one trained now for ``steps`` steps."""
    run = work / "tiny-run"
    tiny = ROOT / "ddpm_kit" / "testing" / "tiny.toml"
    env = {**ENV, "DDPM_KIT_DATA_STORE": str(work / "store-tiny")}
    if trained is not None:
        shutil.copytree(trained, run)
    else:
        subprocess.run(ddpm_kit(1, "run", str(tiny), "--run-dir", str(run), "--set", f"train.steps={steps}",
                                "--no-sample", "--no-eval", "--set", "sample.batch_size=16"), env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):
        for processes in counts:
            for what, args in (("sample", ["sample", str(run), "-n", str(num_images)]),
                               ("evaluate", ["evaluate", str(run)])):
                times.setdefault((what, processes), []).append(measure(ddpm_kit(processes, *args), env)[0])
    rows = ["| command (tiny run, T = 50) | " + " | ".join(f"{n} process(es)" for n in counts) + " | ratio |",
            "|---|" + "---|" * (len(counts) + 1)]
    for what, label in (("sample", f"`ddpm-kit sample -n {num_images}`"), ("evaluate", "`ddpm-kit evaluate` (bpd + fid)")):
        medians = [statistics.median(times[(what, n)]) for n in counts]
        rows.append(f"| {label} | " + " | ".join(f"{m:.1f} s" for m in medians)
                    + f" | {medians[0] / medians[-1]:.2f}x |")
    return rows


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--parts", nargs="+", choices=["data", "work"], default=["data", "work"])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where the runs compute (cpu: accelerate's ACCELERATE_USE_CPU, even beside a GPU)")
    parser.add_argument("--run", type=Path, help="a trained run of the tiny test recipe (ddpm_kit/testing/tiny.toml) for the commands' part "
                        "(default: train one)")
    parser.add_argument("--smoke", action="store_true", help="32 images, a cold store only, 4 samples, 1 round, "
                        "1 process")
    parser.add_argument("--out", type=Path, help="where the JSON goes (default benchmarks/scaling.json; "
                        "--smoke needs it, so a smoke run never replaces the published figures)")
    args = parser.parse_args(argv)
    if args.smoke and args.out is None:
        parser.error("--smoke needs --out (benchmarks/scaling.json holds the published figures)")
    args.out = args.out or ROOT / "benchmarks" / "scaling.json"
    kinds, steps = ("cold", "warm"), 20
    if args.smoke:
        args.sizes, args.num_images, args.rounds, args.processes, kinds, steps = [32], 4, 1, [1], ("cold",), 2
    if args.device == "cpu":
        ENV["ACCELERATE_USE_CPU"] = "true"
    work = Path(tempfile.mkdtemp(prefix="ddpm-kit-scaling-"))
    counts = tuple(args.processes)
    try:
        tables = data_rows(args.sizes, work, counts, kinds) if "data" in args.parts else []
        if "work" in args.parts:
            tables += [""] + work_rows(work, args.num_images, args.rounds, counts, steps, args.run)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(tables))
    args.out.write_text(json.dumps({"cpu_count": os.cpu_count(), "device": args.device, "time": time.time(),
                                    "tables": tables}, indent=1))
    return tables


if __name__ == "__main__":
    main()
