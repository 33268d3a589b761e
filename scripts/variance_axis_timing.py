"""Wall time of each sampler of docs/variance-axis.md in one process, interleaved (rounds of every
row in turn; the fastest round counts), on this CPU alone: the FID runs' own times include
process start-up and features and were taken beside other work.

    .venv/bin/python scripts/variance_axis_timing.py runs/quickstart   # -> RUN/variance_axis_timing.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STEPS = (10, 20, 50, 100)
ROWS = [("ancestral", None, ())] + [row for K in STEPS for row in (
    ("analytic", K, ()), ("analytic", K, ("trajectory=optimal",)),
    ("respaced", K, ("variance=fixed_beta",)), ("respaced", K, ("variance=fixed_beta_tilde",)),
    ("diffusers-sde-dpm-solver++", K, ()))]


def main(run_dir: Path, images: int = 64, rounds: int = 2) -> None:
    import torch

    from ddpm_kit.engine import load_run_model, sample_images
    from ddpm_kit.plugins import get_registry
    from ddpm_kit.engine.sampling import SamplingOverride
    from ddpm_kit.workflow import load_run

    registry = get_registry()
    base, run = load_run(registry, run_dir)
    model = load_run_model(base, run, use_ema=True, device=torch.device("cpu"))
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, steps, params in ROWS:
            components, _ = load_run(registry, run_dir, SamplingOverride(name, steps, params=params))
            started = time.perf_counter()
            sample_images(components, model, images, torch.device("cpu"), seed=components.recipe.sample.seed)
            seconds = time.perf_counter() - started
            key = " ".join([name, *(f"K={steps}" for _ in [0] if steps), *params])
            best[key] = min(best.get(key, float("inf")), seconds)
            print(f"{key}: {seconds:.1f} s", flush=True)
    out = Path(run_dir) / "variance_axis_timing.json"
    out.write_text(json.dumps({"images": images, "rounds": rounds, "torch_threads": torch.get_num_threads(),
                               "seconds": best}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/quickstart"))
