"""ddpm-kit benchmarks: ratios against the bare PyTorch loop and against diffusers, in one run.

    python benchmarks/run.py                      # this machine's CPU; prints a table, writes benchmarks/results.json
    python benchmarks/run.py --device cuda        # the same comparisons on a GPU
    python benchmarks/run.py --smoke --out /tmp/r.json   # tiny sizes, seconds: tests/test_benchmarks.py runs it
    python benchmarks/run.py --parts training     # one part (training, sampling, bpd, memory, scaling, processes)

Every comparison runs both sides in this process on the same UNet2DModel, batch, precision and
device, alternating repetitions, and reports the median time of each side and their ratio. The
training row times the engine's own ``Trainer.train_step`` (the method ``ddpm-kit run`` calls), so
a change to the engine is measured, and a change that breaks this script fails its smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# the engine (accelerate, datasets) is imported where it is used: the memory probes import this
# module in fresh interpreters and should measure the model, not the imports
from ddpm_kit.builtins.samplers import sample_ancestral  # noqa: E402
from ddpm_kit.diffusion import GaussianDiffusion  # noqa: E402
from ddpm_kit.gaussian import LN2, discretized_gaussian_log_likelihood, mean_flat, normal_kl  # noqa: E402
from ddpm_kit.plugins import get_registry  # noqa: E402
from ddpm_kit.runs import RunFolder  # noqa: E402

PARTS = ("training", "sampling", "bpd", "memory", "scaling", "processes")


@dataclass(frozen=True)
class Sizes:
    """How big each part runs: the measurement, or the smoke test (seconds, no figure to read)."""

    recipe: Path
    preset: str
    image_size: int
    train_overrides: tuple[str, ...]
    train_repeats: int
    compiled: bool
    sample_batch: int
    chunk: int
    rounds: int
    bpd_batch: int
    bpd_chunk: int
    memory_steps: int
    memory_sample_steps: int
    scaling: tuple[tuple[int, int], ...]
    scaling_T: int
    process_steps: int
    process_counts: tuple[int, ...]


FULL = Sizes(ROOT / "recipes" / "quickstart.toml", "cpu-small", 16, ("train.steps=100000",), 30, True, 64, 100, 5,
             32, 100, 20, 1000, ((16, 16), (64, 16), (128, 16), (64, 32)), 50, 40, (1, 2))
# no torch.compile (a cold compile alone takes a minute), one launch of two processes
SMOKE = Sizes(ROOT / "ddpm_kit" / "testing" / "tiny.toml", "cpu-tiny", 8, ("train.steps=100",), 2, False, 2, 2, 1,
              2, 2, 1, 2, ((2, 8),), 2, 2, (2,))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def synchronized(fn, device: torch.device):
    """``fn`` followed by a wait for the device's queued work (a GPU runs asynchronously)."""
    if device.type != "cuda":
        return fn

    def run():
        fn()
        torch.cuda.synchronize(device)
    return run


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(fns: dict, repeats: int, warmup: int = 1, scale: float = 1.0) -> dict[str, float]:
    """Median seconds per call of each function, alternating them to share machine noise, times
    ``scale`` (a chunk of a long loop timed in place of the whole, see bench_sampling)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) * scale for k, v in samples.items()}


def build(registry, image_size: int, device: torch.device, channels: int = 1, preset: str = "cpu-small",
          T: int = 1000, variance: str = "fixed_beta"):
    d = GaussianDiffusion(registry.build("schedule", "linear", {"T": T}), registry.build("parameterization", "eps"),
                          registry.build("variance", variance), registry.build("decoder", "discretized_gaussian"))
    torch.manual_seed(0)
    model = registry.build("backbone", "unet2d", {"preset": preset}, in_channels=channels,
                           out_channels=d.output_channels(channels), image_size=image_size)
    return d, model.to(device)


# -- 1. training step overhead ------------------------------------------------------------------
def engine_trainer(registry, sizes: Sizes, device: torch.device, run_dir: Path, *overrides: str):
    """The engine's Trainer for the benchmark's recipe on ``device``, ready for ``train_step``."""
    from ddpm_kit.engine import Trainer, build_components
    from ddpm_kit.recipe import load_recipe

    recipe, _ = load_recipe(sizes.recipe, registry, [*sizes.train_overrides, "train.checkpoint_every=0", *overrides])
    before = os.environ.get("ACCELERATE_USE_CPU")
    if device.type == "cpu":  # accelerate's own switch: the CPU even where a GPU is present
        os.environ["ACCELERATE_USE_CPU"] = "true"
    try:
        trainer = Trainer(build_components(recipe, registry, str(sizes.recipe)), RunFolder(run_dir))
    finally:
        if before is None:
            os.environ.pop("ACCELERATE_USE_CPU", None)
        else:
            os.environ["ACCELERATE_USE_CPU"] = before
    if trainer.accelerator.device.type != device.type:
        raise SystemExit(f"accelerate chose {trainer.accelerator.device}, the benchmark asked for {device}")
    trainer.start(0)
    return trainer


def bench_training(registry, sizes: Sizes, device: torch.device) -> dict:
    """The engine's training step (``Trainer.train_step``: the seeded global batch, the objective,
    clipping with the non-finite check, Adam, the lr schedule, EMA) against a bare loop with the
    same UNet, batch, optimizer, clipping and EMA on the same data."""
    from accelerate.state import AcceleratorState

    from ddpm_kit.engine import correct_compiled_gradients, make_ema

    with tempfile.TemporaryDirectory() as tmp:
        trainer = engine_trainer(registry, sizes, device, Path(tmp) / "run")
        unet, batch = trainer.unwrapped().unet, trainer.settings.batch_size
        rows = trainer.components.data.rows("train")
        pixels = rows[:len(rows)].to(device)  # the whole split in memory, as a bare loop would hold it
        ab = trainer.diffusion.alphas_cumprod.float().to(device)
        opt = torch.optim.Adam(unet.parameters(), lr=trainer.settings.lr)
        ema = make_ema(unet, trainer.settings.ema_decay, warmup=False)
        step = [0]

        def ddpm_kit_step(t=trainer):
            t.train_step(step[0])
            step[0] += 1

        def bare_step():
            x0 = pixels[torch.randint(0, len(pixels), (batch,), device=device)].float() / 127.5 - 1
            t = torch.randint(0, len(ab), (batch,), device=device)
            noise = torch.randn_like(x0)
            a = ab[t].view(-1, 1, 1, 1)
            loss = ((unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t).sample - noise) ** 2).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema.step(unet.parameters())

        fns = {"ddpm_kit": synchronized(ddpm_kit_step, device), "bare": synchronized(bare_step, device)}
        times = interleaved(fns, sizes.train_repeats, warmup=2)
        result = {"batch": batch, "image_size": trainer.components.recipe.data.image_size,
                  "ddpm_kit_s": times["ddpm_kit"], "bare_s": times["bare"], "ratio": times["ddpm_kit"] / times["bare"],
                  "engine_steps": step[0], "target": "<= 1.03"}
        if sizes.compiled:  # train.compile: the engine's own compiled step (accelerate's dynamo backend)
            AcceleratorState._reset_state(reset_partial_state=True)
            compiled = engine_trainer(registry, sizes, device, Path(tmp) / "compiled", "train.compile=true")
            with correct_compiled_gradients(True):
                start = time.perf_counter()
                ddpm_kit_step(compiled)
                result["compile_s"] = time.perf_counter() - start
                fns = {"compiled": synchronized(lambda: ddpm_kit_step(compiled), device), "bare": fns["bare"]}
                times = interleaved(fns, sizes.train_repeats, warmup=1)
            result.update(compiled_s=times["compiled"], compiled_bare_s=times["bare"],
                          compiled_speedup=times["bare"] / times["compiled"])
        AcceleratorState._reset_state(reset_partial_state=True)
    return result


# -- 2. sampling ---------------------------------------------------------------------------------
def bench_sampling(registry, sizes: Sizes, device: torch.device, T: int = 1000) -> dict:
    """T-step ancestral sampling: ddpm-kit vs diffusers' DDPMPipeline on the same UNet, (a) both in
    fp32, (b) ddpm-kit in bf16 autocast eagerly and (c) with the backbone under torch.compile.

    A step costs the same whatever T is (one network call plus elementwise updates), so every
    variant runs whole ``chunk``-step chains (a chunk-step linear schedule) in alternation for
    ``rounds`` rounds, and the median chain time is scaled by T / chunk: drifts of this shared
    machine hit all sides alike instead of whichever happened to run during a slow minute."""
    from diffusers import DDPMPipeline, DDPMScheduler

    from ddpm_kit.engine import autocast_for

    batch, size, chunk = sizes.sample_batch, sizes.image_size, sizes.chunk
    d, model = build(registry, size, device, preset=sizes.preset, T=chunk)
    model.eval()
    pipe = DDPMPipeline(unet=model.unet, scheduler=DDPMScheduler(num_train_timesteps=chunk, beta_schedule="linear"))
    pipe.set_progress_bar_config(disable=True)

    def ours(net, precision: str):
        def run():
            g = torch.Generator(device).manual_seed(0)
            with torch.inference_mode(), autocast_for(device, precision):  # as engine.sample_images runs it
                x_T = torch.randn(batch, 1, size, size, generator=g, device=device)  # an inference tensor
                sample_ancestral(d, net, x_T, generator=g)
        return synchronized(run, device)

    def theirs():
        pipe(batch_size=batch, generator=torch.Generator(device).manual_seed(0), num_inference_steps=chunk,
             output_type="np")

    compiled = torch.compile(model) if sizes.compiled else model  # smoke: the eager bf16 path stands in
    start = time.perf_counter()
    with torch.inference_mode(), autocast_for(device, "bf16"):  # the first call compiles (same guards as ours())
        compiled(torch.randn(batch, 1, size, size, device=device), torch.zeros(batch, dtype=torch.long, device=device))
    compile_s = time.perf_counter() - start
    t = interleaved({"diffusers": theirs, "fp32": ours(model, "no"), "bf16": ours(model, "bf16"),
                     "best": ours(compiled, "bf16")}, repeats=sizes.rounds, warmup=1, scale=T / chunk)
    ref = t["diffusers"]
    return {"batch": batch, "image_size": size, "T": T, "chunk": chunk, "rounds": sizes.rounds,
            "ddpm_kit_fp32_s": t["fp32"], "diffusers_fp32_s": ref, "speedup_fp32": ref / t["fp32"],
            "ddpm_kit_bf16_s": t["bf16"], "speedup_bf16": ref / t["bf16"],
            "ddpm_kit_best_s": t["best"], "speedup_best": ref / t["best"],
            "compile_s": compile_s, "speedup_best_with_compile": ref / (t["best"] + compile_s),
            "best": f"bf16 autocast{' + torch.compile' if sizes.compiled else ''} + inference_mode",
            "targets": "fp32 >= 1.0x, best >= 1.8x"}


# -- 3. bits/dim evaluation ----------------------------------------------------------------------
def improved_diffusion_style_bpd_loop(d: GaussianDiffusion, model, x0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A plain per-timestep loop written like improved-diffusion's calc_bpd_loop (independent of
    GaussianDiffusion.calc_bpd_loop): one network call per t, then KL or decoder NLL."""
    total = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
    for i in reversed(range(d.num_timesteps)):
        t = torch.full((x0.shape[0],), i, device=x0.device)
        noise = torch.randn(x0.shape, generator=g, device=x0.device)
        x_t = d.q_sample(x0, t, noise)
        eps = model(x_t, t)
        pred_x0 = d.x0_from_eps(x_t, t, eps)
        mean = d.q_posterior_mean(pred_x0, x_t, t)
        log_var = d.gather("log_betas_clipped", t, x_t).expand_as(x_t)
        true_mean, _, true_log_var = d.q_posterior_mean_variance(x0, x_t, t)
        if i == 0:
            term = -mean_flat(discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var, exact_cdf=True)) / LN2
        else:
            term = mean_flat(normal_kl(true_mean, true_log_var, mean, log_var)) / LN2
        total += term.double()
    return total + d.prior_bpd(x0).double()


def bench_bpd(registry, sizes: Sizes, device: torch.device, T: int = 1000, timesteps_per_batch: int = 4) -> dict:
    """The full bound's images/s, both loops on a ``chunk``-timestep schedule in alternation for
    ``rounds`` rounds (a timestep costs the same whatever T is), scaled to T timesteps."""
    batch, size, chunk = sizes.bpd_batch, sizes.image_size, sizes.bpd_chunk
    d, model = build(registry, size, device, preset=sizes.preset, T=chunk)
    model.eval()
    x0 = torch.randint(0, 256, (batch, 1, size, size), device=device).float() / 127.5 - 1
    results = {}

    def ours():
        with torch.inference_mode():
            results["ours"] = d.calc_bpd_loop(model, x0, generator=torch.Generator(device).manual_seed(0),
                                              timesteps_per_batch=timesteps_per_batch)["total_bpd"]

    def plain():
        with torch.inference_mode():
            results["plain"] = improved_diffusion_style_bpd_loop(d, model, x0, torch.Generator(device).manual_seed(0))

    times = interleaved({"ours": synchronized(ours, device), "plain": synchronized(plain, device)},
                        repeats=sizes.rounds, warmup=1, scale=T / chunk)
    diff = (results["ours"].double() - results["plain"]).abs().max().item()
    return {"batch": batch, "image_size": size, "T": T, "chunk": chunk, "rounds": sizes.rounds,
            "timesteps_per_batch": timesteps_per_batch,
            "ddpm_kit_images_per_s": batch / times["ours"], "plain_images_per_s": batch / times["plain"],
            "speedup": times["plain"] / times["ours"], "max_abs_difference_bpd": diff, "target": ">= 1.0x, identical"}


# -- 4. memory and 5. scaling ---------------------------------------------------------------------
def peak_memory_mb(setup: str, works: list[str], device: torch.device) -> list[tuple[float, float]]:
    """(MB held after ``setup``, peak MB while the work runs) for each of ``works``, each in a fresh
    interpreter (they run side by side: each reads only its own memory): resident memory on the
    CPU (the kernel's high-water mark is reset after ``setup`` with /proc/self/clear_refs, so the
    peak belongs to the work), allocated memory on a GPU."""
    if device.type == "cuda":
        probe = ("base = torch.cuda.memory_allocated() / 2**20; torch.cuda.reset_peak_memory_stats()\n"
                 "{work}\nprint(base, torch.cuda.max_memory_allocated() / 2**20)")
    else:
        probe = ("status = lambda key: float(next(l.split()[1] for l in open('/proc/self/status') "
                 "if l.startswith(key)))\nbase = status('VmRSS:'); open('/proc/self/clear_refs', 'w').write('5')\n"
                 "{work}\nprint(base / 1024, status('VmHWM:') / 1024)")
    procs = [subprocess.Popen([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n{setup}\n"
                               + probe.format(work=work)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for work in works]
    results = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"memory probe failed: {err[-2000:]}")
        base, peak = map(float, out.strip().splitlines()[-1].split())
        results.append((base, peak))
    return results


def bench_memory(sizes: Sizes, device: torch.device) -> dict:
    size, steps, sample_steps = sizes.image_size, sizes.memory_steps, sizes.memory_sample_steps
    setup = ("from benchmarks.run import build; from ddpm_kit.plugins import get_registry; import torch\n"
             f"device = torch.device({str(device)!r})\n"
             f"d, m = build(get_registry(), {size}, device, preset={sizes.preset!r}, T={sample_steps})\n"
             "obj = get_registry().build('objective', 'simple')\n"
             "from ddpm_kit.builtins.samplers import sample_ancestral\nopt = torch.optim.Adam(m.parameters())")
    x = f"torch.rand(64, 1, {size}, {size}, device=device)"
    train = (f"for _ in range({steps}):\n"
             f"    l = d.training_losses(m, {x} * 2 - 1, obj)['loss'].mean(); "
             "l.backward(); opt.step(); opt.zero_grad()")
    sample = f"with torch.inference_mode(): sample_ancestral(d, m.eval(), torch.randn(64, 1, {size}, {size}, device=device))"
    (base, train_peak), (_, sample_peak) = peak_memory_mb(setup, [train, sample], device)
    return {"train_peak_mb": train_peak, "sample_peak_mb": sample_peak, "import_and_model_mb": base,
            "measure": "allocated GPU memory" if device.type == "cuda" else "resident set (RSS)",
            "size": f"{size}x{size}, batch 64, {sizes.preset}"}


def bench_scaling(registry, sizes: Sizes, device: torch.device) -> list[dict]:
    rows = []
    for batch, image_size in sizes.scaling:
        d, model = build(registry, image_size, device, preset=sizes.preset)
        objective = registry.build("objective", "simple")
        opt = torch.optim.Adam(model.parameters())
        x0 = torch.rand(batch, 1, image_size, image_size, device=device) * 2 - 1

        def step():
            loss = d.training_losses(model, x0, objective)["loss"].mean()
            loss.backward()
            opt.step()
            opt.zero_grad()

        step()
        train_s = median_time(synchronized(step, device), 3)
        d_short, _ = build(registry, image_size, device, preset=sizes.preset, T=sizes.scaling_T)
        model.eval()
        with torch.inference_mode():
            sample_s = median_time(synchronized(lambda: sample_ancestral(d_short, model, torch.randn_like(x0)),
                                                device), 1)
        rows.append({"batch": batch, "image_size": image_size, "train_step_s": train_s,
                     "train_images_per_s": batch / train_s, "sample_step_s": sample_s / sizes.scaling_T,
                     "sample_images_per_s_1000_steps": batch / (sample_s / sizes.scaling_T * 1000)})
    return rows


def bench_processes(sizes: Sizes, device: torch.device) -> dict:
    """Steps/s of `ddpm-kit run` (tiny recipe) under accelerate launch on each of
    ``sizes.process_counts`` processes: CPU processes on a machine without a GPU, one process per
    GPU with ``--device cuda``. Each run's summary must show that many processes."""
    recipe = ROOT / "ddpm_kit" / "testing" / "tiny.toml"
    args = ["--set", f"train.steps={sizes.process_steps}", "--set", "train.batch_size=64", "--set",
            "train.checkpoint_every=0", "--set", "train.log_every=1", "--no-sample", "--no-eval"]
    gpus = torch.cuda.device_count()
    counts = [n for n in sizes.process_counts if device.type == "cpu" or n <= gpus]
    # CPU processes even beside a GPU: the launcher and the runs see none
    env = {**os.environ, "TQDM_DISABLE": "1", **({"CUDA_VISIBLE_DEVICES": ""} if device.type == "cpu" else {})}
    out = {}
    for n in counts:
        # accelerate launch --cpu starts ONE process whatever --num_processes says; --multi_gpu starts
        # n, which ddpm-kit joins into one gloo group when there is no GPU (docs/training.md)
        flags = ["--multi_gpu"] if n > 1 else ["--cpu"] if device.type == "cpu" else []
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "accelerate.commands.launch", *flags, "--num_processes", str(n),
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "-m", "ddpm_kit", "run", str(recipe), "--run-dir", f"{tmp}/run", *args]
            subprocess.run(cmd, check=True, capture_output=True, env=env)
            run = RunFolder(f"{tmp}/run")
            metrics = run.read_metrics()
            out[f"{n}_process_steps_per_s"] = statistics.median(m["steps_per_s"] for m in metrics[1:] or metrics)
            seen = run.read_summary()["train_processes"]["num_processes"]
            if seen != n:
                raise SystemExit(f"accelerate launch --num_processes {n} trained on {seen} process(es)")
    out["note"] = ("tiny recipe, global batch 64" + ("; on this CPU the processes share the same cores"
                                                      if device.type == "cpu" else ""))
    return out


def measure(parts: list[str], sizes: Sizes, device: torch.device) -> dict:
    registry = get_registry()
    results = {"device": device_name(device), "device_type": device.type, "torch": torch.__version__,
               "threads": torch.get_num_threads(), "smoke": sizes.recipe == SMOKE.recipe,
               "date": time.strftime("%Y-%m-%d")}
    steps = {"training": lambda: bench_training(registry, sizes, device),
             "sampling": lambda: bench_sampling(registry, sizes, device),
             "bpd": lambda: bench_bpd(registry, sizes, device),
             "memory": lambda: bench_memory(sizes, device),
             "scaling": lambda: bench_scaling(registry, sizes, device),
             "processes": lambda: bench_processes(sizes, device)}
    for part in parts:
        started = time.perf_counter()
        results[part] = steps[part]()
        print(f"[benchmark] {part}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: proves the harness runs, measures nothing")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device of every comparison (default: cuda if there is one)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants (a cold compile "
                        "takes minutes)")
    parser.add_argument("--out", type=Path, help="where the JSON goes (default benchmarks/results.json; "
                        "--smoke needs it, so a smoke run never replaces the published figures)")
    args = parser.parse_args(argv)
    if args.smoke and args.out is None:
        parser.error("--smoke needs --out (benchmarks/results.json holds the published figures)")
    args.out = args.out or ROOT / "benchmarks" / "results.json"
    sizes = SMOKE if args.smoke else FULL
    results = measure(args.parts, replace(sizes, compiled=False) if args.no_compile else sizes, torch.device(args.device))
    args.out.write_text(json.dumps(results, indent=2))
    print(format_table(results))
    print(f"\nwrote {args.out}")
    return results


def format_table(r: dict) -> str:
    lines = [f"{r['device']} ({r['device_type']}, {r['threads']} CPU threads), torch {r['torch']}, {r['date']}"]
    rows = []
    if "training" in r:
        t = r["training"]
        rows.append(f"| training step (`Trainer.train_step`, bs {t['batch']}, {t['image_size']}px) vs bare loop | "
                    f"{t['ddpm_kit_s'] * 1e3:.1f} ms | {t['bare_s'] * 1e3:.1f} ms | {t['ratio']:.3f} | {t['target']} |")
        if "compiled_s" in t:
            rows.append(f"| training step with `train.compile` (one-off compile {t['compile_s']:.0f} s) vs bare loop | "
                        f"{t['compiled_s'] * 1e3:.1f} ms | {t['compiled_bare_s'] * 1e3:.1f} ms | "
                        f"{t['compiled_speedup']:.2f}x faster | (no target) |")
    if "sampling" in r:
        s = r["sampling"]
        rows += [f"| sampling fp32 ({s['T']} steps, bs {s['batch']}; median of {s['rounds']} interleaved "
                 f"{s['chunk']}-step chains x {s['T'] // s['chunk']}) vs DDPMPipeline fp32 | {s['ddpm_kit_fp32_s']:.1f} s "
                 f"| {s['diffusers_fp32_s']:.1f} s | {s['speedup_fp32']:.2f}x | >= 1.0x |",
                 f"| sampling bf16 autocast, eager vs DDPMPipeline fp32 | {s['ddpm_kit_bf16_s']:.1f} s | "
                 f"{s['diffusers_fp32_s']:.1f} s | {s['speedup_bf16']:.2f}x | (no target) |",
                 f"| sampling best ({s['best']}) vs DDPMPipeline fp32 | {s['ddpm_kit_best_s']:.1f} s | "
                 f"{s['diffusers_fp32_s']:.1f} s | {s['speedup_best']:.2f}x | >= 1.8x |",
                 f"| the same plus its one-off compile ({s['compile_s']:.1f} s), one batch | "
                 f"{s['ddpm_kit_best_s'] + s['compile_s']:.1f} s | {s['diffusers_fp32_s']:.1f} s | "
                 f"{s['speedup_best_with_compile']:.2f}x | (no target) |"]
    if "bpd" in r:
        b = r["bpd"]
        rows.append(f"| bits/dim, T={b['T']} (images/s) vs plain loop | {b['ddpm_kit_images_per_s']:.2f} | "
                    f"{b['plain_images_per_s']:.2f} | {b['speedup']:.2f}x (max diff {b['max_abs_difference_bpd']:.1e}) | "
                    ">= 1.0x, identical |")
    if rows:
        lines += ["", "| benchmark | ddpm-kit | reference | ratio | target |", "|---|---|---|---|---|", *rows]
    if "memory" in r:
        m = r["memory"]
        lines += ["", f"Peak {m['measure']}: training {m['train_peak_mb']:.0f} MB, sampling {m['sample_peak_mb']:.0f} MB "
                      f"(after imports and model {m['import_and_model_mb']:.0f} MB; {m['size']})"]
    if "scaling" in r:
        lines += ["", "| batch | image | train step | train img/s | sample step | sample img/s (1000 steps) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {row['batch']} | {row['image_size']} | {row['train_step_s'] * 1e3:.0f} ms | "
                  f"{row['train_images_per_s']:.0f} | {row['sample_step_s'] * 1e3:.1f} ms | "
                  f"{row['sample_images_per_s_1000_steps']:.2f} |" for row in r["scaling"]]
    if "processes" in r:
        p = r["processes"]
        counts = ", ".join(f"{k.split('_')[0]} process(es) {v:.2f} steps/s" for k, v in p.items()
                           if k.endswith("steps_per_s"))
        lines += ["", f"accelerate launch: {counts} ({p['note']})"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
