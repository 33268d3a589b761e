"""How far a run's samples are from real digits: FID against its real-vs-real floor at the same
sample count, and the classifier's confident fraction against real digits' (the quickstart ablation's measure).

    python benchmarks/sample_quality.py runs/quickstart                  # 1,000 samples, the recipe's sampler
    python benchmarks/sample_quality.py runs/quickstart -n 256 --sampler diffusers-sde-dpm-solver++ --steps 20
    python benchmarks/sample_quality.py runs/quickstart --device cuda       # sample and score on a GPU
    python benchmarks/sample_quality.py runs/tiny --smoke                   # 8 samples: the harness, seconds

It is `ddpm-kit evaluate RUN --metric fid --num-samples N` (samples kept in samples/eval_<N>*.npz,
figures in eval/fid*.json, real statistics cached) plus the two ratios on one line, each with its
standard error over the draw of the samples (bootstrap for FID, binomial for the fraction): at
1,000 samples FID moves by several units from one sample set to the next.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> dict:
    from ddpm_kit.plugins import get_registry
    from ddpm_kit.engine.sampling import SamplingOverride
    from ddpm_kit.workflow import evaluate_run

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("-n", "--num-samples", type=int, default=1000)
    parser.add_argument("--sampler")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--device", help="torch device (default: accelerate's, the GPU if there is one)")
    parser.add_argument("--smoke", action="store_true", help="8 samples (proves the harness, measures nothing)")
    args = parser.parse_args(argv)
    m = evaluate_run(get_registry(), args.run, limit=None, use_ema=None, device=args.device, metric="fid",
                     num_samples=8 if args.smoke else args.num_samples,
                     override=SamplingOverride(args.sampler, args.steps))
    print(f"{args.run}: FID@{int(m['fid_samples'])} {m['fid']:.2f} ± {m['fid_stderr']:.2f} / floor@"
          f"{int(m['fid_floor_images'])} {m['fid_real_floor']:.2f} = {m['fid'] / m['fid_real_floor']:.2f}x "
          f"± {m['fid_stderr'] / m['fid_real_floor']:.2f} (goal <= 2x); confident {m['confident']:.3f} "
          f"± {m['confident_stderr']:.3f} vs real {m['confident_real']:.3f} (gap "
          f"{m['confident_real'] - m['confident']:+.3f}, goal <= 0.10); {m['fid_extractor']}"
          + (f"; class accuracy {m['class_accuracy']:.3f}" if "class_accuracy" in m else ""))
    return m


if __name__ == "__main__":
    main()
