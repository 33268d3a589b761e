"""The mutation score from mutmut's results: killed / all mutants, with the survivors listed."""

from __future__ import annotations

import collections
import subprocess
import sys


def main() -> int:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], capture_output=True,
                         text=True).stdout
    status = {}
    for line in out.splitlines():
        name, _, state = line.strip().rpartition(": ")
        if name:
            status[name] = state
    counts = collections.Counter(status.values())
    total = sum(counts.values())
    killed = counts.get("killed", 0)
    print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    print(f"mutation score: {killed} / {total} = {100 * killed / max(total, 1):.1f}% killed")
    for name, state in sorted(status.items()):
        if state != "killed":
            print(f"  {state}: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
