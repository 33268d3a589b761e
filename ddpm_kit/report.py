"""``ddpm-kit report RUN...``: one markdown table and one self-contained HTML page over many runs
(docs/evaluation.md, "Reports", describes both)."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DdpmKitError
from .recipe import read_toml
from .runs import RunFolder

COLUMNS = ["run", "parameterization", "variance", "objective", "steps", "train time", "sample time", "bits/dim",
           "FID", "FID floor", "confident (real)", "classifier score"]


def _fmt(value: float | None, digits: int = 3, stderr: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" + (f" ± {stderr:.{digits}f}" if stderr is not None else "")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _array(run: RunFolder, path: Path) -> np.ndarray | None:
    """The array of a run's .npy file (None when absent; a damaged one is an error naming it)."""
    arrays = run.read_arrays(path)
    return None if arrays is None else arrays["array"]


def summarize(run: RunFolder) -> dict[str, Any]:
    """One row of the report: what the recipe chose and what the run measured."""
    recipe = read_toml(run.recipe_file)
    diffusion = recipe.get("diffusion", {})
    metrics = run.read_json(run.results_file())
    summary = run.read_summary()
    done = run.read_metrics()
    return {
        "run": run.path.name, "path": run.path,
        "parameterization": diffusion.get("parameterization", {}).get("name", "eps"),
        "variance": diffusion.get("variance", {}).get("name", "fixed_beta"),
        "objective": recipe.get("objective", {}).get("name", "simple"),
        "steps": str(done[-1]["step"]) if done else "0",
        "train time": _duration(summary.get("train_seconds")),
        "sample time": _duration(summary.get("sample_seconds")),
        "bits/dim": _fmt(metrics.get("bpd"), 3, metrics.get("bpd_stderr")),
        "FID": _fmt(metrics.get("fid"), 2, metrics.get("fid_stderr")),
        "FID floor": _fmt(metrics.get("fid_real_floor"), 2),
        "confident (real)": (f"{_fmt(metrics['confident'], 3, metrics.get('confident_stderr'))} "
                             f"({metrics['confident_real']:.3f})" if "confident" in metrics else "-"),
        "fid_samples": int(metrics["fid_samples"]) if "fid_samples" in metrics else None,
        "sampler": metrics.get("sampler"),  # samples of another sampler than the recipe's (evaluate --sampler)
        "classifier score": _fmt(metrics.get("classifier_score"), 2),
        "extractor": metrics.get("fid_extractor"),
        "losses": [(m["step"], m["loss"]) for m in done if "loss" in m],  # eval entries have none
    }


def _against_first_of_group(rows: list[dict[str, Any]], data: dict[str, Any], group, difference,
                             missing, pairs: list[tuple[str, str]] = (), unpaired: str = "",
                             source: str = "") -> list[str]:
    """One line per run that has ``data``: its difference from the first earlier run of the same
    ``group(data)`` (the first run of each group is the baseline of the others); ``missing(row)``
    explains a run without data (or None to pass over it in silence). Each ``(b, a)`` of ``pairs``
    adds the line "b minus a" unless it is there already: the difference when the two runs can be
    paired (the same group), else why not (``unpaired``, or a run without its ``source`` file)."""
    base: dict[str, str] = {}
    shown = set()
    lines = []
    for row in rows:
        name = row["run"]
        if name not in data:
            if (why := missing(row)) is not None:
                lines.append(f"- {name}: {why}")
            continue
        first = base.setdefault(group(data[name]), name)
        if first != name:
            shown.add((name, first))
            lines.append(f"- {name} minus {first}: {difference(data[name], data[first])}")
    for b, a in dict.fromkeys(pairs):
        if (b, a) in shown:
            continue
        if without := [run for run in (b, a) if run not in data]:
            why = f"{without[0]} has no {source}"
        else:
            why = difference(data[b], data[a]) if group(data[b]) == group(data[a]) else f"not paired: {unpaired}"
        lines.append(f"- {b} minus {a}: {why}")
    return lines if len(data) > 1 or pairs else []


def paired_bpd(rows: list[dict[str, Any]], pairs: list[tuple[str, str]] = ()) -> list[str]:
    """Each run's bits/dim minus that of the first run that bounded the same test images with the
    same noise (the same data settings, seed and number of images: image i's noise comes from
    (seed, i)), image by image: the mean difference and its standard error."""
    data = {}
    for row in rows:
        run = RunFolder(row["path"])
        if (terms := _array(run, run.bpd_file("bpd_terms"))) is not None:
            recipe = read_toml(run.recipe_file)
            data[row["run"]] = (json.dumps([recipe.get("data"), recipe.get("run", {}).get("seed", 0)], sort_keys=True,
                                           default=str), terms.sum(1))

    def difference(b, a):
        diff = b[1] - a[1]
        return (f"{diff.mean():+.4f} ± {diff.std(ddof=1) / np.sqrt(len(diff)):.4f} bits/dim "
                f"({len(diff)} images, paired)")

    return _against_first_of_group(rows, data, lambda d: (d[0], len(d[1])), difference, lambda row: None, pairs,
                                   unpaired="other test images, noise (the run's seed) or number of images",
                                   source=RunFolder("").bpd_file("bpd_terms").as_posix())


def paired_fid(rows: list[dict[str, Any]], pairs: list[tuple[str, str]] = ()) -> list[str]:
    """Each run's FID and confident fraction minus those of the first run whose samples it can be
    paired with (the same feature extractor, number of samples and sample seed: sample i starts
    from the same noise in every run of one data shape), with the paired bootstrap standard error."""
    from .features import FeatureStats, paired_difference

    data = {}
    for row in rows:
        run = RunFolder(row["path"])
        if row["fid_samples"] and (arrays := run.read_arrays(run.features_file(row["fid_samples"], row["sampler"]))):
            data[row["run"]] = arrays

    def group(d):
        return str(d["extractor"]), len(d["features"]), d["sample_seed"].item()

    def difference(b, a):
        reference = FeatureStats(a["reference_mu"], a["reference_sigma"], int(a["reference_n"]))
        paired = paired_difference(reference, b["features"], b["confident"], a["features"], a["confident"])
        return (f"FID {paired['fid']:+.2f} ± {paired['fid_stderr']:.2f}, confident {paired['confident']:+.3f} ± "
                f"{paired['confident_stderr']:.3f} ({len(a['features'])} samples, paired)")

    def missing(row):
        if row["fid_samples"] is None:
            return None
        features = RunFolder("").features_file(row["fid_samples"], row["sampler"]).as_posix()
        return f"no {features} (ddpm-kit evaluate {row['path']} --metric fid writes it)"

    return _against_first_of_group(rows, data, group, difference, missing, pairs,
                                   unpaired="another feature extractor, number of samples or sample seed",
                                   source="FID features (eval/fid_features_<N>.npz)")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    if extractors := sorted({r["extractor"] for r in rows if r["extractor"]}):
        lines += ["", "FID features: " + "; ".join(extractors)]
    return "\n".join(lines) + "\n"


SIDE_BY_SIDE = 10  # samples per run in the side-by-side rows


def compare(rows: list[dict[str, Any]], out: Path) -> list[tuple[Path, str]]:
    """The runs on shared figures in ``out``, each with its caption, for those runs that have the data."""
    from .plots import plot_bpd_terms, plot_loss_curve, plot_rate_distortion, plot_sample_rows

    runs = {row["run"]: RunFolder(row["path"]) for row in rows}
    terms = {name: a for name, run in runs.items() if (a := _array(run, run.bpd_file("bpd_terms"))) is not None}
    errors = {name: a for name in terms if (a := _array(runs[name], runs[name].bpd_file("xstart_mse"))) is not None}
    losses = {row["run"]: tuple(zip(*row["losses"])) for row in rows if row["losses"]}
    samples = {name: stored.images[:SIDE_BY_SIDE].numpy() for name, run in runs.items()
               if (stored := run.read_samples()) is not None}
    figures = []
    if terms:
        figures.append((plot_bpd_terms(terms, out / "compare_bpd_per_timestep.png"),
                        "bits per timestep L_t and the cumulative bound, every run"))
    if errors:
        figures.append((plot_rate_distortion({n: (terms[n], errors[n]) for n in errors}, None,
                                             out / "compare_rate_distortion.png"), "rate-distortion, every run"))
    if losses:
        figures.append((plot_loss_curve(losses, None, out / "compare_loss.png"), "training loss, every run"))
    if samples:
        figures.append((plot_sample_rows(samples, out / "compare_samples.png"),
                        f"the first {SIDE_BY_SIDE} samples of each run (samples/final.npz; the same sample seed "
                        "gives every run of one data shape the same starting noise)"))
    return figures


def check_pairs(pairs: list[tuple[str, str]], names: list[str]) -> None:
    """Every run a pair names is one of the reported runs (their folder names)."""
    for pair in pairs:
        if unknown := [name for name in pair if name not in names]:
            raise DdpmKitError(f"--pair {pair[0]}:{pair[1]}: no run named {unknown[0]!r}; "
                               f"the runs are {', '.join(names)}")


def write_report(runs: list[Path], out: Path, pairs: list[tuple[str, str]] = ()) -> tuple[Path, Path]:
    """report.md (the table, the paired differences) and report.html (those, the runs compared, each
    run's figures); each ``(b, a)`` of ``pairs`` adds "b minus a" (folder names)."""
    rows = [summarize(RunFolder.existing(r)) for r in runs]
    check_pairs(pairs, [row["run"] for row in rows])
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows)
    differences = [(heading, lines) for heading, lines in
                   (("Bits/dim differences on the same test images and noise:", paired_bpd(rows, pairs)),
                    ("Sample-quality differences on the same sample indices:", paired_fid(rows, pairs))) if lines]
    table += "".join(f"\n{heading}\n\n" + "\n".join(lines) + "\n" for heading, lines in differences)
    environments = environment_table(rows)
    table += environments
    (out / "report.md").write_text(table)
    compared = "".join(_figure(f.name, c) for f, c in compare(rows, out))
    shown = {row["run"]: copy_figures(row, out / row["run"]) for row in rows}
    chains = "".join(_figure(f"{row['run']}/{f.name}", row["run"]) for row in rows for f in shown[row["run"]]
                     if f.name == RunFolder(row["path"]).progressive_file().name)
    sections = "".join(f"<h2>{html.escape(row['run'])}</h2><p>{html.escape(row['parameterization'])} / "
                       f"{html.escape(row['variance'])} / {html.escape(row['objective'])}, bits/dim "
                       f"{html.escape(row['bits/dim'])}, FID {html.escape(row['FID'])}</p>"
                       + "".join(_figure(f"{row['run']}/{f.name}", f.stem) for f in shown[row["run"]]) for row in rows)
    paired = "".join(f"<p>{html.escape(heading)}</p><ul>" + "".join(f"<li>{html.escape(line[2:])}</li>" for line in lines)
                     + "</ul>" for heading, lines in differences)
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in COLUMNS) + "</tr>" for r in rows)
    (out / "report.html").write_text(
        f"{PAGE_HEAD}<h1>ddpm-kit report</h1><table><tr>{head}</tr>{body}</table>{paired}{_html_table(environments)}"
        f"<h2>The runs compared</h2>{compared}"
        + (f"<h3>x0-hat along the reverse chain, side by side</h3><div class='row'>{chains}</div>" if chains else "")
        + sections)
    return out / "report.md", out / "report.html"


def environment_table(rows: list[dict[str, Any]]) -> str:
    """What differs between the environments the runs trained in (their first provenance record):
    a markdown table, or nothing when they agree or fewer than two runs have a record."""
    from .provenance import environment_rows

    records = {row["run"]: next((r for r in RunFolder(row["path"]).read_provenance() if r.get("command") == "run"),
                                None) for row in rows}
    if sum(r is not None for r in records.values()) < 2:
        return ""
    differing = environment_rows(records)
    if not differing:
        return "\nEvery run trained with the same ddpm-kit, libraries, plugins and device.\n"
    lines = ["", "Environments that differ (each run's first training):", "",
             "| | " + " | ".join(records) + " |", "|---|" + "---|" * len(records)]
    lines += [f"| {name} | " + " | ".join(values[run] for run in records) + " |" for name, values in differing]
    return "\n".join(lines) + "\n"


def _html_table(markdown: str) -> str:
    """A markdown table (and the lines before it) as HTML."""
    lines = [line for line in markdown.strip().splitlines() if line and not line.startswith("|---")]
    text = "".join(f"<p>{html.escape(line)}</p>" for line in lines if not line.startswith("|"))
    cells = [[html.escape(c.strip()) for c in line.strip("|").split("|")] for line in lines if line.startswith("|")]
    if cells:
        text += ("<table>" + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells)
                 + "</table>")
    return text


PAGE_HEAD = ("<!doctype html><meta charset='utf-8'><title>ddpm-kit report</title><style>"
             "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:4px 8px}figure{display:inline-block;margin:6px;vertical-align:top}img{max-height:260px;"
             "max-width:100%}.row{display:flex;flex-wrap:wrap}</style>")


def _figure(src: str, caption: str) -> str:
    return f'<figure><img src="{html.escape(src)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def copy_figures(row: dict[str, Any], copies: Path) -> list[Path]:
    """A run's own figures copied into ``copies`` and its loss curve drawn there (the report never
    writes into a run), in the order the page shows them."""
    from .plots import plot_loss_curve

    run = RunFolder(row["path"])
    copies.mkdir(exist_ok=True)
    shown = []
    for figure in (run.grid_file(), run.progressive_file(), "loss", run.bpd_file("bpd_per_timestep", suffix=".png"),
                   run.bpd_file("rate_distortion", suffix=".png")):
        if figure == "loss" and row["losses"]:
            steps, losses = zip(*row["losses"])
            shown.append(plot_loss_curve(list(steps), list(losses), copies / "loss.png"))
        elif figure != "loss" and figure.is_file():
            shutil.copyfile(figure, copies / figure.name)
            shown.append(copies / figure.name)
    return shown
