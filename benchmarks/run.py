"""ddpm-kit benchmarks: ratios against the bare PyTorch loop and against diffusers, in one run.

    python benchmarks/run.py                 # prints a table, writes benchmarks/results.json
    python benchmarks/run.py --quick         # smaller sizes, for a smoke test

Every comparison runs both sides in this process on the same UNet2DModel, batch and precision,
alternating repetitions, and reports the median time of each side and their ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddpm_kit.builtins.samplers import sample_ancestral  # noqa: E402
from ddpm_kit.diffusion import GaussianDiffusion  # noqa: E402
from ddpm_kit.engine import autocast_for, correct_compiled_gradients, make_ema  # noqa: E402
from ddpm_kit.gaussian import LN2, discretized_gaussian_log_likelihood, mean_flat, normal_kl  # noqa: E402
from ddpm_kit.plugins import get_registry  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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


def build(registry, image_size: int, channels: int = 1, preset: str = "cpu-small", T: int = 1000,
          variance: str = "fixed_beta"):
    d = GaussianDiffusion(registry.build("schedule", "linear", {"T": T}), registry.build("parameterization", "eps"),
                          registry.build("variance", variance), registry.build("decoder", "discretized_gaussian"))
    torch.manual_seed(0)
    model = registry.build("backbone", "unet2d", {"preset": preset}, in_channels=channels,
                           out_channels=d.output_channels(channels), image_size=image_size)
    return d, model


# -- 1. training step overhead ------------------------------------------------------------------
def bench_training(registry, batch: int, image_size: int, repeats: int, compiled: bool = True) -> dict:
    """ddpm-kit's training step (engine pieces: global batch, training_losses, clip, Adam, EMA)
    against a bare loop with the same UNet, batch, optimizer and EMA."""
    from ddpm_kit.engine import global_batch, step_generator

    d, model = build(registry, image_size)
    objective = registry.build("objective", "simple")
    pixels = torch.randint(0, 256, (1024, 1, image_size, image_size), dtype=torch.uint8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    ema = make_ema(model, 0.999, warmup=False)
    step = [0]

    def ddpm_kit_step(net=model):
        g = step_generator(0, step[0])
        step[0] += 1
        x0 = global_batch(pixels, batch, g, flip=False)
        t, w = objective.sample_t(d, batch, torch.device("cpu"), g)
        noise = torch.randn(x0.shape, generator=g)
        loss = d.training_losses(net, x0, objective, t=t, noise=noise, weights=w, update=False)["loss"].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.step(model.parameters())

    unet = model.unet
    ab = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)

    def bare_step():
        x0 = pixels[torch.randint(0, len(pixels), (batch,))].float() / 127.5 - 1
        t = torch.randint(0, 1000, (batch,))
        noise = torch.randn_like(x0)
        a = ab[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = ((unet(x_t, t).sample - noise) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.step(unet.parameters())

    times = interleaved({"ddpm_kit": ddpm_kit_step, "bare": bare_step}, repeats, warmup=2)
    result = {"batch": batch, "image_size": image_size, "ddpm_kit_s": times["ddpm_kit"], "bare_s": times["bare"],
              "ratio": times["ddpm_kit"] / times["bare"], "target": "<= 1.03"}
    if compiled:  # train.compile: the same step with the backbone under torch.compile, as the engine runs it
        with correct_compiled_gradients(True):
            net = torch.compile(model)
            start = time.perf_counter()
            ddpm_kit_step(net)
            result["compile_s"] = time.perf_counter() - start
            times = interleaved({"compiled": lambda: ddpm_kit_step(net), "bare": bare_step}, repeats, warmup=1)
        result.update(compiled_s=times["compiled"], compiled_bare_s=times["bare"],
                      compiled_speedup=times["bare"] / times["compiled"])
    return result


# -- 2. sampling ---------------------------------------------------------------------------------
def bench_sampling(registry, batch: int, image_size: int, T: int, chunk: int, rounds: int) -> dict:
    """T-step ancestral sampling: ddpm-kit vs diffusers' DDPMPipeline on the same UNet, (a) both in
    fp32, (b) ddpm-kit in bf16 autocast eagerly and (c) with the backbone under torch.compile.

    A step costs the same whatever T is (one network call plus elementwise updates), so every
    variant runs whole ``chunk``-step chains (a chunk-step linear schedule) in alternation for
    ``rounds`` rounds, and the median chain time is scaled by T / chunk: drifts of this shared
    machine hit all sides alike instead of whichever happened to run during a slow minute."""
    from diffusers import DDPMPipeline, DDPMScheduler

    d, model = build(registry, image_size, T=chunk)
    model.eval()
    pipe = DDPMPipeline(unet=model.unet, scheduler=DDPMScheduler(num_train_timesteps=chunk, beta_schedule="linear"))
    pipe.set_progress_bar_config(disable=True)
    cpu = torch.device("cpu")

    def ours(net, precision: str):
        def run():
            g = torch.Generator().manual_seed(0)
            with torch.inference_mode(), autocast_for(cpu, precision):  # as engine.sample_images runs it
                x_T = torch.randn(batch, 1, image_size, image_size, generator=g)  # an inference tensor
                sample_ancestral(d, net, x_T, generator=g)
        return run

    def theirs():
        pipe(batch_size=batch, generator=torch.Generator().manual_seed(0), num_inference_steps=chunk, output_type="np")

    compiled = torch.compile(model)
    start = time.perf_counter()
    with torch.inference_mode(), autocast_for(cpu, "bf16"):  # the first call compiles (same guards as ours())
        compiled(torch.randn(batch, 1, image_size, image_size), torch.zeros(batch, dtype=torch.long))
    compile_s = time.perf_counter() - start
    t = interleaved({"diffusers": theirs, "fp32": ours(model, "no"), "bf16": ours(model, "bf16"),
                     "best": ours(compiled, "bf16")}, repeats=rounds, warmup=1, scale=T / chunk)
    ref = t["diffusers"]
    return {"batch": batch, "image_size": image_size, "T": T, "chunk": chunk, "rounds": rounds,
            "ddpm_kit_fp32_s": t["fp32"], "diffusers_fp32_s": ref, "speedup_fp32": ref / t["fp32"],
            "ddpm_kit_bf16_s": t["bf16"], "speedup_bf16": ref / t["bf16"],
            "ddpm_kit_best_s": t["best"], "speedup_best": ref / t["best"],
            "compile_s": compile_s, "speedup_best_with_compile": ref / (t["best"] + compile_s),
            "best": "bf16 autocast + torch.compile + inference_mode", "targets": "fp32 >= 1.0x, best >= 1.8x"}


# -- 3. bits/dim evaluation ----------------------------------------------------------------------
def improved_diffusion_style_bpd_loop(d: GaussianDiffusion, model, x0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A plain per-timestep loop written like improved-diffusion's calc_bpd_loop (independent of
    GaussianDiffusion.calc_bpd_loop): one network call per t, then KL or decoder NLL."""
    total = torch.zeros(x0.shape[0], dtype=torch.float64)
    for i in reversed(range(d.num_timesteps)):
        t = torch.full((x0.shape[0],), i)
        noise = torch.randn(x0.shape, generator=g)
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


def bench_bpd(registry, batch: int, image_size: int, T: int, timesteps_per_batch: int, chunk: int,
              rounds: int) -> dict:
    """The full bound's images/s, both loops on a ``chunk``-timestep schedule in alternation for
    ``rounds`` rounds (a timestep costs the same whatever T is), scaled to T timesteps."""
    d, model = build(registry, image_size, T=chunk)
    model.eval()
    x0 = torch.randint(0, 256, (batch, 1, image_size, image_size)).float() / 127.5 - 1
    results = {}

    def ours():
        with torch.inference_mode():
            results["ours"] = d.calc_bpd_loop(model, x0, generator=torch.Generator().manual_seed(0),
                                              timesteps_per_batch=timesteps_per_batch)["total_bpd"]

    def plain():
        with torch.inference_mode():
            results["plain"] = improved_diffusion_style_bpd_loop(d, model, x0, torch.Generator().manual_seed(0))

    times = interleaved({"ours": ours, "plain": plain}, repeats=rounds, warmup=1, scale=T / chunk)
    diff = (results["ours"].double() - results["plain"]).abs().max().item()
    return {"batch": batch, "image_size": image_size, "T": T, "chunk": chunk, "rounds": rounds,
            "timesteps_per_batch": timesteps_per_batch,
            "ddpm_kit_images_per_s": batch / times["ours"], "plain_images_per_s": batch / times["plain"],
            "speedup": times["plain"] / times["ours"], "max_abs_difference_bpd": diff, "target": ">= 1.0x, identical"}


# -- 4. memory and 5. scaling ---------------------------------------------------------------------
def rss_during_mb(setup: str, work: str) -> tuple[float, float]:
    """(resident MB after ``setup``, peak resident MB while ``work`` runs) in a fresh interpreter.
    The kernel's high-water mark is reset between the two (Linux /proc/self/clear_refs), so the
    peak belongs to ``work`` and not to the imports before it."""
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n{setup}\n"
              "status = lambda key: float(next(l.split()[1] for l in open('/proc/self/status') if l.startswith(key)))\n"
              "base = status('VmRSS:'); open('/proc/self/clear_refs', 'w').write('5')\n"
              f"{work}\nprint(base / 1024, status('VmHWM:') / 1024)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    base, peak = map(float, out.stdout.strip().splitlines()[-1].split())
    return base, peak


def bench_memory(steps: int, sample_steps: int) -> dict:
    setup = ("from benchmarks.run import build; from ddpm_kit.plugins import get_registry; import torch\n"
             f"d, m = build(get_registry(), 16, T={sample_steps})\nobj = get_registry().build('objective', 'simple')\n"
             "from ddpm_kit.builtins.samplers import sample_ancestral\nopt = torch.optim.Adam(m.parameters())")
    train = (f"for _ in range({steps}):\n"
             "    l = d.training_losses(m, torch.rand(64, 1, 16, 16) * 2 - 1, obj)['loss'].mean(); "
             "l.backward(); opt.step(); opt.zero_grad()")
    sample = "with torch.inference_mode(): sample_ancestral(d, m.eval(), torch.randn(64, 1, 16, 16))"
    base, train_peak = rss_during_mb(setup, train)
    _, sample_peak = rss_during_mb(setup, sample)
    return {"train_peak_rss_mb": train_peak, "sample_peak_rss_mb": sample_peak, "import_and_model_rss_mb": base,
            "size": "quickstart: 16x16, batch 64, cpu-small"}


def bench_scaling(registry, sizes: list[tuple[int, int]], sample_T: int) -> list[dict]:
    rows = []
    for batch, image_size in sizes:
        d, model = build(registry, image_size)
        objective = registry.build("objective", "simple")
        opt = torch.optim.Adam(model.parameters())
        x0 = torch.rand(batch, 1, image_size, image_size) * 2 - 1

        def step():
            loss = d.training_losses(model, x0, objective)["loss"].mean()
            loss.backward()
            opt.step()
            opt.zero_grad()

        step()
        train_s = median_time(step, 3)
        d_short, _ = build(registry, image_size, T=sample_T)
        model.eval()
        with torch.inference_mode():
            sample_s = median_time(lambda: sample_ancestral(d_short, model, torch.randn_like(x0)), 1)
        rows.append({"batch": batch, "image_size": image_size, "train_step_s": train_s,
                     "train_images_per_s": batch / train_s, "sample_step_s": sample_s / sample_T,
                     "sample_images_per_s_1000_steps": batch / (sample_s / sample_T * 1000)})
    return rows


def bench_processes(steps: int) -> dict:
    """Wall time of `ddpm-kit run` (tiny recipe) with 1 and 2 processes under accelerate launch."""
    import tempfile

    recipe = ROOT / "tests" / "recipes" / "tiny.toml"
    args = ["--set", f"train.steps={steps}", "--set", "train.batch_size=64", "--set", "train.checkpoint_every=0",
            "--no-sample", "--no-eval"]
    out = {}
    for n in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", str(n),
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "-m", "ddpm_kit", "run", str(recipe), "--run-dir", f"{tmp}/run", *args]
            subprocess.run(cmd, check=True, capture_output=True, env={"TQDM_DISABLE": "1", **__import__("os").environ})
            metrics = [json.loads(l) for l in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()]
            out[f"{n}_process_steps_per_s"] = statistics.median(m["steps_per_s"] for m in metrics[1:] or metrics)
    out["note"] = "tiny recipe, global batch 64; on 2 cores both processes share the same cores"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test, not a measurement)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.json")
    args = parser.parse_args()
    q = args.quick
    registry = get_registry()
    results = {"cpu": cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads(), "quick": q}
    results["training"] = bench_training(registry, 64, 16, repeats=5 if q else 30, compiled=not q)
    results["sampling"] = bench_sampling(registry, 16 if q else 64, 16, T=1000, chunk=10 if q else 100,
                                         rounds=2 if q else 5)
    results["bpd"] = bench_bpd(registry, 8 if q else 32, 16, T=1000, timesteps_per_batch=4, chunk=20 if q else 100,
                               rounds=2 if q else 5)
    results["memory"] = bench_memory(steps=3 if q else 20, sample_steps=20 if q else 1000)
    results["scaling"] = bench_scaling(registry, [(16, 16), (64, 16)] if q else [(16, 16), (64, 16), (128, 16),
                                                                                  (64, 32)], sample_T=10 if q else 50)
    results["processes"] = bench_processes(steps=6 if q else 40)
    args.out.write_text(json.dumps(results, indent=2))
    print(format_table(results))
    print(f"\nwrote {args.out}")


def format_table(r: dict) -> str:
    t, s, b, m, p = r["training"], r["sampling"], r["bpd"], r["memory"], r["processes"]
    lines = [f"CPU: {r['cpu']} ({r['threads']} threads), torch {r['torch']}", "",
             "| benchmark | ddpm-kit | reference | ratio | target |", "|---|---|---|---|---|",
             f"| training step (bs {t['batch']}, {t['image_size']}px) vs bare loop | {t['ddpm_kit_s'] * 1e3:.1f} ms | "
             f"{t['bare_s'] * 1e3:.1f} ms | {t['ratio']:.3f} | {t['target']} |",
             *([f"| training step with `train.compile` (one-off compile {t['compile_s']:.0f} s) vs bare loop | "
                f"{t['compiled_s'] * 1e3:.1f} ms | {t['compiled_bare_s'] * 1e3:.1f} ms | {t['compiled_speedup']:.2f}x faster | "
                "(no target) |"] if "compiled_s" in t else []),
             f"| sampling fp32 ({s['T']} steps, bs {s['batch']}; median of {s['rounds']} interleaved "
             f"{s['chunk']}-step chains x {s['T'] // s['chunk']}) vs DDPMPipeline fp32 | {s['ddpm_kit_fp32_s']:.1f} s | "
             f"{s['diffusers_fp32_s']:.1f} s | {s['speedup_fp32']:.2f}x | >= 1.0x |",
             f"| sampling bf16 autocast, eager vs DDPMPipeline fp32 | {s['ddpm_kit_bf16_s']:.1f} s | "
             f"{s['diffusers_fp32_s']:.1f} s | {s['speedup_bf16']:.2f}x | (no target) |",
             f"| sampling best ({s['best']}) vs DDPMPipeline fp32 | {s['ddpm_kit_best_s']:.1f} s | "
             f"{s['diffusers_fp32_s']:.1f} s | {s['speedup_best']:.2f}x | >= 1.8x |",
             f"| the same plus its one-off compile ({s['compile_s']:.1f} s), one batch | "
             f"{s['ddpm_kit_best_s'] + s['compile_s']:.1f} s | {s['diffusers_fp32_s']:.1f} s | "
             f"{s['speedup_best_with_compile']:.2f}x | (no target) |",
             f"| bits/dim, T={b['T']} (images/s) vs plain loop | {b['ddpm_kit_images_per_s']:.2f} | "
             f"{b['plain_images_per_s']:.2f} | {b['speedup']:.2f}x (max diff {b['max_abs_difference_bpd']:.1e}) | "
             ">= 1.0x, identical |", "",
             f"Peak RSS: training {m['train_peak_rss_mb']:.0f} MB, sampling {m['sample_peak_rss_mb']:.0f} MB "
             f"(after imports and model {m['import_and_model_rss_mb']:.0f} MB; {m['size']})", "",
             "| batch | image | train step | train img/s | sample step | sample img/s (1000 steps) |",
             "|---|---|---|---|---|---|"]
    for row in r["scaling"]:
        lines.append(f"| {row['batch']} | {row['image_size']} | {row['train_step_s'] * 1e3:.0f} ms | "
                     f"{row['train_images_per_s']:.0f} | {row['sample_step_s'] * 1e3:.1f} ms | "
                     f"{row['sample_images_per_s_1000_steps']:.2f} |")
    lines += ["", f"accelerate launch --cpu: 1 process {p['1_process_steps_per_s']:.2f} steps/s, "
                  f"2 processes {p['2_process_steps_per_s']:.2f} steps/s ({p['note']})"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
