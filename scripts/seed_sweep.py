"""Run the statistical tests (pytest -m statistical) under 20 values of $DDPM_KIT_TEST_SEED.

Each statistical test states its Monte-Carlo standard error and allows a tolerance at which a
correct implementation fails less than once in a thousand seeds, so all 20 runs must pass.

    python scripts/seed_sweep.py              # seeds 1..20
    python scripts/seed_sweep.py --seeds 5    # seeds 1..5
    python scripts/seed_sweep.py tests/test_conditioning.py   # only these files' statistical tests
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("paths", nargs="*", help="test files or folders (default: the whole suite)")
    args = parser.parse_args()
    failed = []
    for seed in range(1, args.seeds + 1):
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "statistical", "-p", "no:cacheprovider",
                                 *args.paths],
                                cwd=ROOT, env={**os.environ, "DDPM_KIT_TEST_SEED": str(seed)},
                                capture_output=True, text=True)
        summary = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
        print(f"DDPM_KIT_TEST_SEED={seed:>2}: {summary} ({time.perf_counter() - started:.0f} s)", flush=True)
        if result.returncode != 0:
            failed.append(seed)
            print("\n".join(line for line in result.stdout.splitlines() if line.startswith("FAILED")), flush=True)
    print(f"{args.seeds - len(failed)} of {args.seeds} seeds passed" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
