"""The documentation site (mkdocs.yml): `mkdocs build --strict` builds it from docs/, with the API
reference generated from the docstrings and the command line's reference from the click commands,
and fails on a broken link or a reference to a name that does not exist."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=root,
                          capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": ""})


def test_the_site_builds_strictly_with_the_api_and_cli_references(tmp_path):
    result = build(ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    for name in ("GaussianDiffusion", "validate_steps", "open_run", "EvalContext", "randn_like"):
        assert f'id="ddpm_kit.api.{name}"' in api, name  # mkdocstrings rendered each documented name
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "ddpm-kit run" in cli and "--resume" in cli and "--sampler-param" in cli
    plugin = tmp_path / "site" / "repository" / "plugins" / "ddpm-kit-analytic" / "index.html"
    assert plugin.is_file()  # a page outside docs/ that docs/ links to is part of the site


def test_a_broken_link_or_a_missing_name_fails_the_build(tmp_path):
    copy = tmp_path / "repo"
    for part in ("docs", "ddpm_kit", "examples", "plugins"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("*.png", "*.html", "*.npz", "*.npy"))
    shutil.copy(ROOT / "mkdocs.yml", copy)
    (copy / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "mkdocs_hooks.py", copy / "scripts")
    training = copy / "docs" / "training.md"
    training.write_text(training.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    failed = build(copy, tmp_path / "broken-link")
    assert failed.returncode != 0 and "no-such-page.md" in failed.stderr
    training.write_text(training.read_text().replace("See [the missing page](no-such-page.md).", ""))
    (copy / "docs" / "reference" / "api.md").write_text("# API\n\n::: ddpm_kit.api.no_such_name\n")
    failed = build(copy, tmp_path / "missing-name")
    assert failed.returncode != 0 and "ddpm_kit.api.no_such_name could not be found" in failed.stderr
