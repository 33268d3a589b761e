#!/usr/bin/env bash
# A command's startup and exit, alternating the two forms of the command line on the tiny recipe (2
# training steps, no sampling or evaluation: almost all of it is startup and exit):
#   entry: `python -m ddpm_kit` (ddpm_kit.cli.entry: collections every 10,000 objects, frozen at exit)
#   main:  `python -c "from ddpm_kit.cli import main; main()"` (Python's default garbage collection)
#   bash benchmarks/startup.sh [ROUNDS]     # default 5 rounds; prints each and the means
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for _ in $(seq "$rounds"); do
    for form in entry main; do
        if [ "$form" = entry ]; then cmd=(.venv/bin/python -m ddpm_kit); else
            cmd=(.venv/bin/python -c "from ddpm_kit.cli import main; main()"); fi
        rm -rf "$out/run"
        /usr/bin/time -f "$form %e %U %S" -a -o "$out/times" "${cmd[@]}" run ddpm_kit/testing/tiny.toml \
            --run-dir "$out/run" --set train.steps=2 --no-sample --no-eval > /dev/null 2>&1
        tail -n 1 "$out/times" | awk '{printf "%-5s %.2f s wall, %.2f s CPU\n", $1, $2, $3 + $4}'
    done
done
awk '{w[$1] += $2; c[$1] += $3 + $4; n[$1]++}
     END {for (f in w) printf "mean %-5s %.2f s wall, %.2f s CPU (%d rounds)\n", f, w[f] / n[f], c[f] / n[f], n[f]}' \
    "$out/times" | sort
