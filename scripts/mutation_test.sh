#!/usr/bin/env bash
# Mutation testing of the math core with mutmut (config: [tool.mutmut] in pyproject.toml).
#
#   bash scripts/mutation_test.sh            # about 5 min on a 2-core CPU; prints the score
#
# mutmut copies ddpm_kit/ into mutants/ and imports it from there, so it must run from a venv in
# which ddpm-kit is NOT installed editable (the editable finder would import the unmutated code):
# .mutmut-venv sees the project venv's packages through a .pth line (whose own .pth files, the
# editable finders among them, are not run) and adds mutmut.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
if [ ! -x .mutmut-venv/bin/mutmut ]; then
    python3 -m venv .mutmut-venv
    site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    own=$(.mutmut-venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    echo "$site" > "$own/ddpm-kit-venv.pth"
    .mutmut-venv/bin/python -m pip install --quiet --disable-pip-version-check "mutmut==3.8.1"
fi
if (cd / && "$OLDPWD/.mutmut-venv/bin/python" -c "import ddpm_kit" 2>/dev/null); then
    echo "ddpm_kit is importable outside mutants/: mutmut would test the unmutated code" >&2
    exit 1
fi
rm -rf mutants
export TQDM_DISABLE=1 OMP_NUM_THREADS=1
.mutmut-venv/bin/mutmut run --max-children "${MUTMUT_CHILDREN:-2}" || true
.mutmut-venv/bin/python scripts/mutation_score.py
