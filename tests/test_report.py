"""`ddpm-kit report` and `sweep`: the table and the page of one run, runs compared on shared figures
(paired differences on the same test noise, each pair asked for once), and a sweep that keeps
finished rows, resumes an interrupted one and replaces only its block of the doc."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import TINY, cli


@pytest.mark.slow
def test_report_tabulates_runs_and_links_their_pictures(finished_run, tmp_path):
    run, _ = finished_run
    result = cli("report", str(run), "--out", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "report" / "report.md").read_text().splitlines()
    assert table[0].startswith("| run | parameterization | variance | objective | steps |")
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert "| run | eps | fixed_beta | simple | 8 |" in table[2]
    assert f"{metrics['bpd']:.3f} ± {metrics['bpd_stderr']:.3f}" in table[2]
    page = (tmp_path / "report" / "report.html").read_text()
    for picture in ("final.png", "final_progressive.png", "bpd_per_timestep.png", "rate_distortion.png", "loss.png"):
        assert picture in page


@pytest.mark.slow
def test_report_pairs_each_run_with_the_first_run_on_the_same_test_noise(finished_run, tmp_path):
    """Runs of another seed bound other noise: they form their own group, paired with its first run,
    never with a run of the first seed. A pair asked for (--pair B:A) adds B minus A when the two
    can be paired, says why not when they cannot, and never repeats a baseline line."""
    import shutil
    import tomllib

    import tomli_w

    from ddpm_kit.report import paired_bpd

    alpha = np.load(finished_run[0] / "eval" / "bpd_terms.npy")
    rows = []
    for name, seed, scale in (("a", 0, 1.0), ("b", 0, 1.5), ("c", 7, 2.0), ("d", 7, 2.5), ("e", 0, 3.0)):
        run = Path(shutil.copytree(finished_run[0], tmp_path / name))
        recipe = tomllib.loads((run / "recipe.toml").read_text())
        recipe["run"]["seed"] = seed
        (run / "recipe.toml").write_text(tomli_w.dumps(recipe))
        np.save(run / "eval" / "bpd_terms.npy", alpha * scale)
        rows.append({"run": name, "path": run})
    total = alpha.sum(1)
    def scaled(k):
        return f"{k * total.mean():+.4f} ± {abs(k) * total.std(ddof=1) / np.sqrt(len(total)):.4f} bits/dim"

    half = scaled(0.5)
    default = [f"- b minus a: {half} ({len(total)} images, paired)", f"- d minus c: {half} ({len(total)} images, "
               f"paired)", f"- e minus a: {scaled(2.0)} ({len(total)} images, paired)"]
    assert paired_bpd(rows) == default
    (tmp_path / "e" / "eval" / "bpd_terms.npy").rename(tmp_path / "e" / "eval" / "kept.npy")
    without_e = paired_bpd(rows, [("e", "a")])
    (tmp_path / "e" / "eval" / "kept.npy").rename(tmp_path / "e" / "eval" / "bpd_terms.npy")
    assert without_e == default[:2] + ["- e minus a: e has no eval/bpd_terms.npy"]
    # pairable (asked twice); a baseline line already; another seed; a baseline line reversed
    asked = [("e", "b"), ("e", "b"), ("d", "c"), ("b", "d"), ("a", "b")]
    assert paired_bpd(rows, asked) == default + [
        f"- e minus b: {scaled(1.5)} ({len(total)} images, paired)",
        "- b minus d: not paired: other test images, noise (the run's seed) or number of images",
        f"- a minus b: {scaled(-0.5)} ({len(total)} images, paired)"]
    result = cli("report", *(str(r["path"]) for r in rows), "--out", str(tmp_path / "report"), "--pair", "e:f")
    assert result.returncode != 0 and "--pair e:f: no run named 'f'; the runs are a, b, c, d, e" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "report").exists()


@pytest.mark.parametrize("value", ["ab", "a:", ":b", "a:a", "a:b:c"])
def test_a_pair_is_two_different_run_names(value):
    import click

    from ddpm_kit.cli import RunPair

    assert RunPair().convert("mu_mse:mu_vlb", None, None) == ("mu_mse", "mu_vlb")
    with pytest.raises(click.BadParameter, match="is not two different run names B:A"):
        RunPair().convert(value, None, None)


@pytest.mark.slow
def test_report_compares_runs_on_shared_figures_and_is_self_contained(finished_run, tmp_path, monkeypatch):
    """Two runs: bits per timestep, rate-distortion and loss overlaid (each figure draws both runs'
    data), a row of samples per run, the progressive chains side by side; every image the page
    shows is a file in the report folder (copied: the page still works when the runs move)."""
    import re
    import shutil
    from html import escape as html_escape

    from PIL import Image

    from ddpm_kit import plots

    from ddpm_kit.features import FeatureStats, frechet_distance

    runs = [Path(shutil.copytree(finished_run[0], tmp_path / name)) for name in ("alpha", "beta")]
    np.save(runs[1] / "eval" / "bpd_terms.npy", np.load(runs[1] / "eval" / "bpd_terms.npy") * 1.1)
    kept = runs[1] / "eval" / "fid_features_8.npz"  # beta's samples: alpha's moved, all confident
    with np.load(kept) as arrays:
        features = dict(arrays)
    shift = features["features"].mean(0) - features["reference_mu"]  # away from the test split's mean
    features["features"] = features["features"] + shift
    alpha_confident = features["confident"].astype(float)
    features["confident"] = np.ones_like(features["confident"])
    np.savez(kept, **features)
    drawn = {}
    for name in ("plot_bpd_terms", "plot_rate_distortion", "plot_loss_curve", "plot_sample_rows"):
        def spy(first, *args, _name=name, _real=getattr(plots, name)):
            if isinstance(first, dict):
                drawn[_name] = sorted(first)
            return _real(first, *args)
        monkeypatch.setattr(plots, name, spy)
    out = tmp_path / "report"
    # beta:alpha is the baseline line anyway; alpha:beta is asked for
    result = cli("report", *map(str, runs), "--out", str(out), "--pair", "beta:alpha", "--pair", "alpha:beta")
    assert result.returncode == 0, result.stderr
    assert (out / "report.md").read_text().count("beta minus alpha: FID") == 1
    assert drawn == {name: ["alpha", "beta"] for name in drawn} and len(drawn) == 4
    page = (out / "report.html").read_text()
    shown = re.findall(r'<img src="([^"]+)"', page)
    assert {"compare_bpd_per_timestep.png", "compare_rate_distortion.png", "compare_loss.png",
            "compare_samples.png", "alpha/final_progressive.png", "beta/final_progressive.png"} <= set(shown)
    assert all((out / src).is_file() for src in shown)
    shutil.rmtree(runs[0]), shutil.rmtree(runs[1])  # the report does not need the runs any more
    assert all((out / src).is_file() for src in shown)
    two = Image.open(out / "compare_samples.png").size
    alpha = np.load(finished_run[0] / "eval" / "bpd_terms.npy").sum(1)  # beta's terms are 1.1 x alpha's
    want = f"beta minus alpha: {0.1 * alpha.mean():+.4f} ± {0.1 * alpha.std(ddof=1) / np.sqrt(len(alpha)):.4f} bits/dim"
    assert want in (out / "report.md").read_text() and html_escape(want) in page
    alpha_fid = json.loads((finished_run[0] / "eval" / "metrics.json").read_text())["fid"]
    reference = FeatureStats(features["reference_mu"], features["reference_sigma"], int(features["reference_n"]))
    moved = frechet_distance(reference, features["features"]) - alpha_fid
    confident = 1 - alpha_confident
    want = (f"beta minus alpha: FID {moved:+.2f} ± ")
    line = next(line for line in (out / "report.md").read_text().splitlines() if want in line)
    assert line.endswith(f"confident {confident.mean():+.3f} ± {confident.std(ddof=1) / np.sqrt(8):.3f} "
                         "(8 samples, paired)"), line
    assert html_escape(line[2:]) in page and moved > 0
    assert f"- alpha minus beta: FID {-moved:+.2f} ± " in (out / "report.md").read_text()
    # Shifted rows keep their covariance, so each bootstrap round's difference is 2 shift . (its mean -
    # reference mean) + |shift|^2: a standard error of 2 sqrt(shift' S shift / n), S the rows' covariance
    # (ddof 0, as resampling with replacement has it); 100 rounds estimate it to ~7%.
    rows = features["features"]
    expected = 2 * np.sqrt(shift @ np.cov(rows, rowvar=False, ddof=0) @ shift / len(rows))
    assert float(line.split("± ")[1].split(",")[0]) == pytest.approx(expected, rel=0.3)
    header = (out / "report.md").read_text().splitlines()[0].split(" | ")
    cells = dict(zip(header, (out / "report.md").read_text().splitlines()[2].split(" | ")))
    assert cells["sample time"].endswith("s") and " ± " in cells["FID"] and " ± " in cells["confident (real)"]
    result = cli("report", str(finished_run[0]), "--out", str(tmp_path / "one"))
    assert Image.open(tmp_path / "one" / "compare_samples.png").size[1] < two[1]  # one row per run



@pytest.mark.slow
def test_a_sweep_keeps_finished_rows_resumes_an_interrupted_one_and_replaces_its_block(tmp_path,
                                                                                     fresh_accelerate_state):
    recipes = []
    for name in ("first", "second"):
        text = TINY.read_text().replace('name = "tiny"', f'name = "{name}"\noutput_dir = "{tmp_path / "runs"}"')
        (tmp_path / f"{name}.toml").write_text(text)
        recipes.append(tmp_path / f"{name}.toml")
    doc = tmp_path / "doc.md"
    doc.write_text("# Results\n\nbefore\n<!-- sweep:begin -->\nold table\n<!-- sweep:end -->\nafter\n")
    common = ["--set", "eval.metrics=[{name=\"bpd\", limit=4, batch_size=4, timesteps_per_batch=25}]"]
    result = cli("sweep", *map(str, recipes), "--pair", "second:frist", "--report-dir", str(tmp_path / "report"))
    assert result.returncode != 0 and "no run named 'frist'; the runs are first, second" in result.stderr
    assert not (tmp_path / "runs").exists()  # the pairs are checked before any recipe runs
    assert cli("sweep", str(recipes[0]), *common, "--report-dir", str(tmp_path / "report")).returncode == 0
    first = tmp_path / "runs" / "first"
    kept = (first / "model" / "ema.safetensors").read_bytes(), (first / "eval" / "metrics.json").read_text()
    # the second run interrupted after its checkpoint at step 4 (of 6): no final weights, no evaluation
    second = tmp_path / "runs" / "second"
    assert cli("run", str(recipes[1]), *common, "--set", "train.steps=4", "--no-sample", "--no-eval").returncode == 0
    shutil.rmtree(second / "model")
    result = cli("sweep", *map(str, recipes), *common, "--report-dir", str(tmp_path / "report"), "--doc", str(doc),
                 "--pair", "first:second")  # the reverse of the baseline line "second minus first"
    assert result.returncode == 0, result.stderr
    assert f"finished earlier, kept ({first})" in result.stdout and f"resuming {second} from step 4" in result.stdout
    assert ((first / "model" / "ema.safetensors").read_bytes(), (first / "eval" / "metrics.json").read_text()) == kept
    text = doc.read_text()
    assert text.startswith("# Results\n\nbefore\n<!-- sweep:begin -->\n") and text.endswith("<!-- sweep:end -->\nafter\n")
    block = text.split("<!-- sweep:begin -->\n")[1].split("<!-- sweep:end -->")[0]
    assert "old table" not in block and "first" in block and "second" in block
    assert "- second minus first: " in block and "- first minus second: " in block
    assert block == (tmp_path / "report" / "report.md").read_text()
