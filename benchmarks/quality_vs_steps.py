"""Sample quality against sampling steps: FID (offline classifier features) and wall time for each
(sampler, steps), against ancestral sampling over all T steps and the real-vs-real floor.

    python benchmarks/quality_vs_steps.py runs/quickstart            # 1,000 samples per row
    python benchmarks/quality_vs_steps.py runs/quickstart --num-samples 256 --samplers diffusers-unipc --steps 10 20
    python benchmarks/quality_vs_steps.py runs/quickstart --device cuda
    python benchmarks/quality_vs_steps.py runs/tiny --smoke --out /tmp/q   # 8 samples, one 2-step row: seconds

Every row draws the same images (image i from the generator of (seed, i)) with the run's EMA
weights and the recipe's sampling precision. The floor is FID between N real training images and
the test split, N being the sample count. Writes benchmarks/quality_vs_steps.json, a markdown table
on stdout and docs/images/quality_vs_steps.png (FID against steps, one line per sampler); ``--out``
puts both files in one folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> list[dict]:
    import torch

    from ddpm_kit.images import to_model_range
    from ddpm_kit.engine import EvalContext, load_run_model, sample_images
    from ddpm_kit.features import cached_classifier, features_and_probs, frechet_distance
    from ddpm_kit.plugins import get_registry
    from ddpm_kit.engine.sampling import SamplingOverride
    from ddpm_kit.workflow import load_run

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--samplers", nargs="+", default=["diffusers-dpm-solver++", "diffusers-unipc"])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100, 250])
    parser.add_argument("--no-ancestral", action="store_true", help="skip the T-step ancestral reference")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="folder for the JSON and the plot (default: benchmarks/, docs/images/)")
    parser.add_argument("--smoke", action="store_true", help="8 samples, diffusers-unipc at 2 steps (needs --out)")
    args = parser.parse_args(argv)
    if args.smoke:
        if args.out is None:
            parser.error("--smoke needs --out (it must not replace the published figures)")
        args.num_samples, args.samplers, args.steps = 8, ["diffusers-unipc"], [2]
    json_file = (args.out or ROOT / "benchmarks") / "quality_vs_steps.json"
    plot_file = (args.out or ROOT / "docs" / "images") / "quality_vs_steps.png"
    registry, device = get_registry(), torch.device(args.device)

    base, run = load_run(registry, args.run)
    model = load_run_model(base, run, use_ema=True, device=device)
    context = EvalContext(base, model, device, run)
    train_x, train_y = context.labelled("train")
    net, digest = cached_classifier(context.data_key(), train_x, train_y)
    real = context.images("test")
    f_real = features_and_probs(net, real)[0]
    n = args.num_samples
    floor = frechet_distance(f_real, features_and_probs(net, train_x[:n])[0])
    json_file.parent.mkdir(parents=True, exist_ok=True)

    rows = []
    plan = [] if args.no_ancestral else [("ancestral", None)]
    plan += [(s, k) for s in args.samplers for k in args.steps]
    for name, steps in plan:
        components, _ = load_run(registry, args.run, SamplingOverride(name, steps))
        started = time.perf_counter()
        images = sample_images(components, model, n, device, seed=components.recipe.sample.seed)
        seconds = time.perf_counter() - started
        fid = frechet_distance(f_real, features_and_probs(net, to_model_range(images))[0])
        rows.append({"sampler": name, "steps": steps or base.diffusion.num_timesteps, "seconds": seconds,
                     "fid": fid, "floor": floor, "samples": n})
        print(json.dumps(rows[-1]), flush=True)
        json_file.write_text(json.dumps(
            {"run": str(args.run), "extractor": f"classifier-{digest}", "rows": rows}, indent=1))

    reference = next((r for r in rows if r["sampler"] == "ancestral"), None)
    print(f"\n| sampler | steps | wall time ({n} samples) | FID | FID / floor | vs ancestral-T FID | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        rel = f"{r['fid'] / reference['fid']:.2f}x" if reference else "-"
        speed = f"{reference['seconds'] / r['seconds']:.1f}x" if reference else "-"
        print(f"| {r['sampler']} | {r['steps']} | {r['seconds']:.0f} s | {r['fid']:.2f} | {r['fid'] / floor:.2f} | "
              f"{rel} | {speed} |")
    plot(rows, reference, floor, plot_file)
    return rows


def plot(rows: list[dict], reference: dict | None, floor: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["sampler"] for r in rows if r["sampler"] != "ancestral"):
        mine = [r for r in rows if r["sampler"] == name]
        ax.plot([r["steps"] for r in mine], [r["fid"] for r in mine], marker="o", label=name)
    if reference:
        ax.axhline(reference["fid"], color="k", linestyle="--", label=f"ancestral, {reference['steps']} steps")
    ax.axhline(floor, color="gray", linestyle=":", label="real vs real (floor)")
    ax.set(xscale="log", xlabel="sampling steps", ylabel=f"FID ({rows[0]['samples']} samples)",
           title="sample quality against steps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
