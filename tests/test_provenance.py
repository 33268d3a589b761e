"""Every run says what made it (provenance.jsonl): ddpm-kit's version and commit, the libraries,
the plugin and distribution behind each component; a resume says what changed since training last
ran; the report tabulates what differs between runs."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ddpm_kit.provenance import changes
from helpers import TINY, cli

pytestmark = pytest.mark.slow
HEUN = Path(__file__).resolve().parents[1] / "examples" / "plugins" / "ddpm-kit-heun"


def heun_at(version: str, tmp_path: Path) -> Path:
    """The heun example plugin pip-installed at ``version`` into a folder of its own."""
    package = Path(shutil.copytree(HEUN, tmp_path / f"heun-{version}"))
    pyproject = package / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('version = "0.1.0"', f'version = "{version}"'))
    site = tmp_path / f"site-{version}"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(package)], check=True, capture_output=True)
    return site


def test_a_run_with_a_third_party_sampler_records_it_and_its_resume_names_the_upgrade(tmp_path, monkeypatch,
                                                                                     fresh_accelerate_state):
    run = tmp_path / "run"
    args = ["--run-dir", str(run), "--set", 'sample.sampler={name="heun", steps=5}', "--no-eval"]
    old = str(heun_at("0.1.0", tmp_path))
    monkeypatch.syspath_prepend(old)
    assert cli("run", str(TINY), *args, "--set", "train.steps=4").returncode == 0
    (first,) = [json.loads(line) for line in (run / "provenance.jsonl").read_text().splitlines()]
    assert first["command"] == "run"
    assert first["components"]["sample.sampler"] == {"name": "heun", "plugin": "heun", "distribution": "ddpm-kit-heun",
                                                     "version": "0.1.0"}
    assert first["components"]["backbone"]["distribution"] == "ddpm-kit"
    assert {"name": "heun", "distribution": "ddpm-kit-heun", "version": "0.1.0"} in first["plugins"]
    assert first["ddpm_kit"]["version"] == "0.1.0" and len(first["ddpm_kit"]["commit"]) == 40
    assert first["libraries"]["torch"].startswith("2.") and first["processes"]["num_processes"] == 1

    sys.path.remove(old)  # the plugin upgraded under the run
    monkeypatch.syspath_prepend(str(heun_at("0.2.0", tmp_path)))
    result = cli("run", str(TINY), *args, "--set", "train.steps=6", "--resume", "latest")
    assert result.returncode == 0, result.stderr
    assert (f"note: since {run} last trained: sample.sampler 'heun' from ddpm-kit-heun 0.1.0 -> ddpm-kit-heun 0.2.0"
            in result.stderr.splitlines())
    assert cli("sample", str(run), "-n", "2", "--name", "two").returncode == 0
    commands = [json.loads(line)["command"] for line in (run / "provenance.jsonl").read_text().splitlines()]
    assert commands == ["run", "resume", "sample"]


def test_the_changes_between_two_records_are_named():
    record = {"ddpm_kit": {"version": "0.1.0", "commit": "a" * 40, "dirty": False},
              "libraries": {"python": "3.11.7", "torch": "2.13.0"},
              "components": {"backbone": {"name": "unet2d", "distribution": "ddpm-kit", "version": "0.1.0"}}}
    later = json.loads(json.dumps(record))
    assert changes(record, later) == []
    later["ddpm_kit"].update(commit="b" * 40, dirty=True)
    later["libraries"]["torch"] = "2.14.1"
    later["components"]["backbone"]["version"] = "0.2.0"
    assert changes(record, later) == ["ddpm-kit commit aaaaaaaaaa -> bbbbbbbbbb",
                                      "ddpm-kit's checkout has uncommitted changes", "torch 2.13.0 -> 2.14.1",
                                      "backbone 'unet2d' from ddpm-kit 0.1.0 -> ddpm-kit 0.2.0"]


def test_the_report_shows_what_differs_between_the_runs_environments(finished_run, tmp_path):
    a = Path(shutil.copytree(finished_run[0], tmp_path / "a"))
    b = Path(shutil.copytree(finished_run[0], tmp_path / "b"))
    records = [json.loads(line) for line in (b / "provenance.jsonl").read_text().splitlines()]
    records[0]["libraries"]["torch"] = "2.99.0"
    (b / "provenance.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert cli("report", str(a), str(b), "--out", str(tmp_path / "report")).returncode == 0
    table = (tmp_path / "report" / "report.md").read_text()
    torch_version = json.loads((a / "provenance.jsonl").read_text().splitlines()[0])["libraries"]["torch"]
    assert "Environments that differ (each run's first training):" in table
    assert f"| torch | {torch_version} | 2.99.0 |" in table.splitlines()
    assert "2.99.0" in (tmp_path / "report" / "report.html").read_text()
