"""Every script in benchmarks/ runs in its smoke mode (tiny sizes, seconds), so a change to the engine
or the command line that breaks one fails here instead of the next time someone measures. The
figures of a smoke run mean nothing; each test checks that the work it stands for really happened."""

import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest

from helpers import Started

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def script(name: str):
    """benchmarks/<name>.py as the module ``benchmarks.<name>``."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"benchmarks.{name}")


def test_every_benchmark_script_has_a_smoke_test():
    tested = {"run", "quality_vs_steps", "sample_quality", "quickstart_ablation", "scaling"}
    assert {p.stem for p in BENCHMARKS.glob("*.py")} - {"__init__"} == tested


@pytest.mark.launches  # its processes part: 2 processes
def test_run_times_the_engines_own_training_step_on_every_part(tmp_path, fresh_accelerate_state):
    out = tmp_path / "results.json"
    results = script("run").main(["--smoke", "--device", "cpu", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    training = results["training"]
    assert training["engine_steps"] == 2 + 2  # warm-up and timed calls of Trainer.train_step
    assert training["ratio"] > 0 and training["batch"] == 8
    assert results["bpd"]["max_abs_difference_bpd"] < 1e-4  # the same bound as the plain loop
    assert results["processes"]["2_process_steps_per_s"] > 0
    assert results["memory"]["train_peak_mb"] > 0 and len(results["scaling"]) == 1
    assert results["device_type"] == "cpu" and results["smoke"]


def copy_of(run: Path, tmp_path: Path) -> Path:
    """A finished run the benchmark may write into (the shared fixture stays as it is)."""
    return Path(shutil.copytree(run, tmp_path / "run"))


def test_sample_quality_scores_the_runs_samples(finished_run, tmp_path, fresh_accelerate_state):
    run = copy_of(finished_run[0], tmp_path)
    metrics = script("sample_quality").main([str(run), "--smoke", "--device", "cpu"])
    assert metrics["fid_samples"] == 8 and json.loads((run / "eval" / "fid.json").read_text()) == metrics


def test_quality_vs_steps_draws_each_row_and_plots(finished_run, tmp_path, fresh_accelerate_state):
    rows = script("quality_vs_steps").main([str(finished_run[0]), "--smoke", "--device", "cpu",
                                            "--out", str(tmp_path)])
    assert [(r["sampler"], r["steps"]) for r in rows] == [("ancestral", 50), ("diffusers-unipc", 2)]
    assert json.loads((tmp_path / "quality_vs_steps.json").read_text())["rows"] == json.loads(json.dumps(rows))
    assert (tmp_path / "quality_vs_steps.png").stat().st_size > 0


def test_quickstart_ablation_trains_measures_and_compares_its_settings(tmp_path, fresh_accelerate_state):
    script("quickstart_ablation").main(["--smoke", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "quickstart_ablation.json").read_text())
    assert set(rows) == {"base", "s2000"} and all(r["steps"] == 2 for r in rows.values())
    assert rows["base"]["fid_minus_base"] == 0  # a setting against itself
    for plot in ("quickstart_fid_vs_steps.png", "quickstart_ablation.png"):
        assert (tmp_path / plot).stat().st_size > 0


def start_in_background(request) -> Started:
    """The scaling smoke run: a process that times processes, started with the session (conftest's
    ``started_with_the_session``; the figures of a smoke run mean nothing)."""
    out = request.getfixturevalue("tmp_path_factory").mktemp("scaling") / "scaling.json"
    return Started([sys.executable, str(BENCHMARKS / "scaling.py"), "--smoke", "--run",
                    str(request.getfixturevalue("finished_run")[0]), "--out", str(out)], out.with_suffix(".log"))


def test_scaling_measures_a_run_from_a_cold_store_and_the_sample_and_evaluate_commands(background):
    result = background[__name__].result()
    assert result.returncode == 0, result.stdout[-3000:]
    tables = json.loads(Path(background[__name__].option("--out")).read_text())["tables"]
    assert [row.split(" | ")[3] for row in tables if row.startswith("| 32 |")] == ["cold"]
    assert any(row.startswith("| `ddpm-kit sample -n 4`") for row in tables)
    assert result.stdout.endswith("\n".join(tables) + "\n")  # what it printed is what it wrote
