#!/usr/bin/env bash
# Set up a development environment in .venv: the CPU build of PyTorch, ddpm-kit (editable, with its
# test, docs and trackers extras) and the plugin packages under plugins/. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip_install() { .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@"; }
# Dev/CI path only: pin the CPU build (an unpinned torch pulls a multi-GB CUDA build). The package
# itself asks for torch>=2.1, so GPU users keep their own build.
pip_install "torch==2.13.0"
pip_install -e ".[dev,docs,trackers]"
for plugin in plugins/*/; do
    [ -f "$plugin/pyproject.toml" ] && pip_install -e "$plugin"
done
.venv/bin/python -c "import ddpm_kit, torch; print(f'ddpm-kit {ddpm_kit.__version__} ready (torch {torch.__version__})')"
