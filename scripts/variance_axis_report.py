"""Tables and a plot from scripts/variance_axis.sh's results: writes docs/images/variance_axis.png
and the block between <!-- variance-axis:begin --> and <!-- variance-axis:end --> of docs/variance-axis.md.

    .venv/bin/python scripts/variance_axis_report.py runs/quickstart
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ddpm_kit.runs import RunFolder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STEPS = (10, 20, 50, 100)
IMAGES = 64
TIMING_KEYS = {  # label -> the row's key in RUN/variance_axis_timing.json (scripts/variance_axis_timing.py)
    "analytic (Analytic-DPM sigma*^2)": "analytic K={K}",
    "analytic, optimal trajectory": "analytic K={K} trajectory=optimal",
    "respaced, sigma^2 = beta": "respaced K={K} variance=fixed_beta",
    "respaced, sigma^2 = beta-tilde": "respaced K={K} variance=fixed_beta_tilde",
    "DPM-Solver++ SDE (diffusers)": "diffusers-sde-dpm-solver++ K={K}",
}
SAMPLERS = {  # label -> eval file stem for K steps
    "analytic (Analytic-DPM sigma*^2)": "fid_analytic-{K}",
    "analytic, optimal trajectory": "fid_analytic-{K}-trajectoryoptimal",
    "analytic, no clip": "fid_analytic-{K}-clip_pixel0",
    "analytic, optimal trajectory, no clip": "fid_analytic-{K}-trajectoryoptimal-clip_pixel0",
    "respaced, sigma^2 = beta": "fid_respaced-{K}-variancefixed_beta",
    "respaced, sigma^2 = beta-tilde": "fid_respaced-{K}-variancefixed_beta_tilde",
    "DPM-Solver++ SDE (diffusers)": "fid_diffusers-sde-dpm-solver++-{K}",
}
BOUNDS = {  # label -> (eval file stem, figure prefix) at T or K steps
    "sigma^2 = beta": ("bpd_limit{n}_variancefixed_beta{k}", "bpd_fixed_beta{K}"),
    "sigma^2 = beta-tilde": ("bpd_limit{n}_variancefixed_beta_tilde{k}", "bpd_fixed_beta_tilde{K}"),
    "Analytic-DPM sigma*^2": ("bpd_analytic_limit{n}{k}", "bpd_analytic{K}"),
    "Analytic-DPM sigma*^2, optimal trajectory": ("bpd_analytic_limit{n}{k}_trajectoryoptimal", "bpd_analytic{K}_optimal"),
}


def load(run: Path, stem: str) -> dict | None:
    folder = RunFolder(run)
    return folder.read_json(folder.results_file(stem)) or None


def times(run: Path) -> dict[str, float]:
    path = run / "variance_axis_times.tsv"
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return {name: float(seconds) for name, seconds in rows}


def bound(run: Path, label: str, K: int | None) -> tuple[float, float, np.ndarray] | None:
    stem, prefix = BOUNDS[label]
    figures = load(run, stem.format(n=IMAGES, k="" if K is None else f"_steps{K}"))
    if figures is None:
        return None
    name = prefix.format(K="" if K is None else f"_{K}")
    terms = RunFolder(run).read_arrays(RunFolder(run).bpd_file("bpd_terms", name))["array"]
    return figures[name], figures[f"{name}_stderr"], terms.sum(1)


def bits_table(run: Path) -> list[str]:
    lines = [f"| bits/dim ({IMAGES} test images) | " + " | ".join(["T = 1000", *(f"K = {K}" for K in STEPS)]) + " |",
             "|---|" + "---|" * (1 + len(STEPS))]
    for label in BOUNDS:
        cells = []
        for K in (None, *STEPS):
            b = bound(run, label, K)
            cells.append("-" if b is None else f"{b[0]:.3f} ± {b[1]:.3f}")
        lines.append(f"| bound, {label} | " + " | ".join(cells) + " |")
    ode = load(run, f"bpd_ode_limit{IMAGES}")
    if ode is not None:
        lines.append(f"| probability-flow ODE (uniform dequantization) | {ode['bpd_ode']:.3f} ± {ode['bpd_ode_stderr']:.3f} "
                     f"(trace ± {ode['bpd_ode_trace_stderr']:.3f}; {ode['bpd_ode_nfe']:.0f} function evaluations) |"
                     + " |" * len(STEPS))
    lines += ["", "Paired differences on the same images and noise (mean ± standard error of the per-image difference):", ""]
    ode_file, base = RunFolder(run).eval_file("bpd_ode.npy"), bound(run, "sigma^2 = beta", None)
    if ode is not None and ode_file.is_file() and base is not None and len(np.load(ode_file)) == len(base[2]):
        diff = np.load(ode_file).mean(1) - base[2]
        lines.append(f"- the ODE minus the bound with sigma^2 = beta (same images; the ODE's own dequantization noise): "
                     f"{diff.mean():+.4f} ± {diff.std(ddof=1) / math.sqrt(len(diff)):.4f} bits/dim")
    for K in (None, *STEPS):
        base = bound(run, "sigma^2 = beta", K)
        for other in [label for label in BOUNDS if label != "sigma^2 = beta"]:
            b = bound(run, other, K)
            if base is not None and b is not None:
                diff = b[2] - base[2]
                lines.append(f"- {'T = 1000' if K is None else f'K = {K}'}: {other} minus sigma^2 = beta: "
                             f"{diff.mean():+.4f} ± {diff.std(ddof=1) / math.sqrt(len(diff)):.4f} bits/dim")
    return lines


def fid_table(run: Path) -> list[str]:
    wall = times(run)
    ancestral = load(run, "fid_ancestral")
    lines = ["| sampler | " + " | ".join(f"K = {K}" for K in STEPS) + " |", "|---|" + "---|" * len(STEPS)]
    for label, stem in SAMPLERS.items():
        cells = []
        for K in STEPS:
            f = load(run, stem.format(K=K))
            cells.append("-" if f is None else f"{f['fid']:.2f} ± {f['fid_stderr']:.2f} ({f['confident']:.0%})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if ancestral is not None:
        lines += ["", f"Ancestral sampling, all 1000 steps: FID {ancestral['fid']:.2f} ± {ancestral['fid_stderr']:.2f}, "
                  f"{ancestral['confident']:.0%} confident; real-vs-real floor at {ancestral['fid_samples']:.0f}: "
                  f"{ancestral['fid_real_floor']:.2f}; real test digits {ancestral['confident_real']:.0%} confident."]
    timing_file = run / "variance_axis_timing.json"
    if timing_file.is_file():
        timing = json.loads(timing_file.read_text())
        seconds, n = timing["seconds"], timing["images"]
        lines += ["", f"Wall time to sample {n} images in one process (scripts/variance_axis_timing.py: every row in "
                  f"turn, {timing['rounds']} rounds, the fastest counts), and the speed-up over ancestral-1000's "
                  f"{seconds['ancestral']:.1f} s:", "",
                  "| sampler | " + " | ".join(f"K = {K}" for K in STEPS) + " |", "|---|" + "---|" * len(STEPS)]
        for label, key in TIMING_KEYS.items():
            cells = [f"{seconds[key.format(K=K)]:.1f} s ({seconds['ancestral'] / seconds[key.format(K=K)]:.0f}x)"
                     if key.format(K=K) in seconds else "-" for K in STEPS]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        if ancestral is not None:
            lines += ["", goal(run, ancestral, seconds)]
    return lines


def goal(run: Path, ancestral: dict, seconds: dict[str, float]) -> str:
    """The issue's goal: a sampler at K <= 50 within 10% of ancestral-1000's FID, at least 20x faster."""
    met = []
    for label, stem in SAMPLERS.items():
        key = TIMING_KEYS.get(label)
        for K in (K for K in STEPS if K <= 50):
            f = load(run, stem.format(K=K))
            if f is None or key is None or key.format(K=K) not in seconds:
                continue
            speed = seconds["ancestral"] / seconds[key.format(K=K)]
            if f["fid"] <= 1.1 * ancestral["fid"] and speed >= 20:
                met.append(f"{label} at K = {K} (FID {f['fid']:.2f} = {f['fid'] / ancestral['fid']:.2f}x "
                           f"ancestral-1000's, {speed:.0f}x faster)")
    return ("Goal (K <= 50, FID within 10% of ancestral-1000's, >= 20x faster): "
            + ("met by " + "; ".join(met) if met else "not met by any sampler here") + ".")


def plot(run: Path, out: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    ancestral = load(run, "fid_ancestral")
    for label, stem in SAMPLERS.items():
        found = [(K, load(run, stem.format(K=K))) for K in STEPS]
        found = [(K, f) for K, f in found if f is not None]
        if found:
            left.errorbar([K for K, _ in found], [f["fid"] for _, f in found], [f["fid_stderr"] for _, f in found],
                          marker="o", capsize=3, label=label)
    if ancestral is not None:
        left.axhline(ancestral["fid"], color="k", ls="--", label="ancestral, 1000 steps")
        left.axhline(ancestral["fid_real_floor"], color="grey", ls=":", label="real-vs-real floor")
    left.set(xscale="log", yscale="log", xlabel="sampling steps K", ylabel="FID (1,000 samples, classifier features)",
             title="sample quality against steps")
    left.set_xticks(STEPS, [str(K) for K in STEPS])
    left.legend(fontsize=7)
    for label in BOUNDS:
        found = [(K, bound(run, label, K)) for K in STEPS]
        found = [(K, b) for K, b in found if b is not None]
        if found:
            right.errorbar([K for K, _ in found], [b[0] for _, b in found], [b[1] for _, b in found], marker="o",
                           capsize=3, label=f"bound, {label}")
        full = bound(run, label, None)
        if full is not None:
            right.errorbar([1000], [full[0]], [full[1]], marker="s", capsize=3, color=right.lines[-1].get_color()
                           if found else None)
    ode = load(run, f"bpd_ode_limit{IMAGES}")
    if ode is not None:
        right.axhline(ode["bpd_ode"], color="k", ls="--", label="probability-flow ODE")
    right.set(xscale="log", yscale="log", xlabel="steps K of the reverse chain (1000: all)", ylabel="bits/dim",
              title=f"likelihood on {IMAGES} test images")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def sample_rows(run: Path, out: Path, K: int = 20, count: int = 12) -> None:
    """The first samples of every sampler at K steps and of ancestral-1000, one row each: the same
    sample seeds, so the same starting noise x_T in every row."""
    from ddpm_kit.plots import plot_sample_rows

    short = {"analytic (Analytic-DPM sigma*^2)": "analytic", "DPM-Solver++ SDE (diffusers)": "DPM-Solver++ SDE",
             "respaced, sigma^2 = beta": "respaced, beta", "respaced, sigma^2 = beta-tilde": "respaced, beta-tilde"}
    rows = {}
    for label, stem in {**SAMPLERS, "ancestral, 1000 steps": "fid_ancestral"}.items():
        tag = stem.format(K=K).removeprefix("fid_")
        path = RunFolder(run).samples_file(RunFolder.metric_sample_name(1000, tag))
        if path.is_file():
            with np.load(path) as stored:
                name = short.get(label, label).replace("optimal trajectory", "optimal")
                rows[name if "1000" in label else f"{name}, K = {K}"] = stored["images"][:count]
    if rows:
        plot_sample_rows(rows, out)


def main(run: Path) -> None:
    doc = ROOT / "docs" / "variance-axis.md"
    plot(run, ROOT / "docs" / "images" / "variance_axis.png")
    sample_rows(run, ROOT / "docs" / "images" / "variance_axis_samples.png")
    block = "\n".join(["<!-- variance-axis:begin -->", *bits_table(run), "", *fid_table(run), "<!-- variance-axis:end -->"])
    text = doc.read_text()
    start, end = text.index("<!-- variance-axis:begin -->"), text.index("<!-- variance-axis:end -->")
    doc.write_text(text[:start] + block + text[end + len("<!-- variance-axis:end -->"):])
    print(block)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/quickstart"))
