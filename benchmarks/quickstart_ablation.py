"""The quickstart's sample-quality ablation: each setting trained, then 1,000 ancestral samples scored
(FID against the real-vs-real floor at 1,000, the classifier's confident fraction against real digits').

    python benchmarks/quickstart_ablation.py                 # collect: table + JSON + plot from runs/q15_*
    python benchmarks/quickstart_ablation.py --run base s2000 # train / measure what is missing, then collect
    python benchmarks/quickstart_ablation.py --smoke --out /tmp/abl   # the harness on the tiny recipe, seconds

Every setting is ``recipes/quickstart.toml`` with ``--set`` overrides that first put back the
base settings (constant lr, EMA 0.995, 1,000 steps: so the table stands when the recipe changes), in
``runs/q15_<name>``; a setting that continues another copies that run and trains on (same weights as
one longer run: the lr is constant after the warm-up). Samples are drawn 250 at a time with bf16
autocast (image i from the generator of (seed, i), so the batch size changes nothing but speed). On
a 2-core CPU a setting costs its training plus ~14-27 minutes of sampling; two settings may run side
by side with ``OMP_NUM_THREADS=1`` each (~1.25x the throughput of one at a time; their wall times are
then not a lone run's). Training and measuring run in this process (``ddpm-kit run`` and
``benchmarks/sample_quality.py``, as their commands would).
Writes benchmarks/quickstart_ablation.json, docs/images/quickstart_fid_vs_steps.png (the curve against
training cost) and docs/images/quickstart_ablation.png (each setting minus the old quickstart, paired);
``--out`` puts all three in one folder (the smoke test's). ``--smoke`` trains two settings (base,
s2000) of the tiny test recipe for 2 steps and scores 8 samples: it proves the harness, nothing more.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddpm_kit.runs import RunFolder  # noqa: E402

RECIPE = ROOT / "recipes" / "quickstart.toml"
SAMPLE_BATCH = ["--set", "sample.batch_size=250"]
NO_ATTENTION = ["--set", 'backbone.down_block_types=["DownBlock2D","DownBlock2D","DownBlock2D"]',
                "--set", 'backbone.up_block_types=["UpBlock2D","UpBlock2D","UpBlock2D"]']

# Every setting is the base settings (OLD) plus its own overrides (later --set wins),
# so the table does not move when recipes/quickstart.toml does.
OLD = ["--set", 'train.lr_schedule="constant"', "--set", "train.ema_decay=0.995", "--set", "train.ema_warmup=false",
       "--set", "train.steps=1000", "--set", "train.batch_size=64"]
COSINE = [*OLD, "--set", 'train.lr_schedule="cosine"']

# name: (what changed, overrides of the quickstart, run it continues or None)
SETTINGS: dict[str, tuple[str, list[str], str | None]] = {
    "base": ("base settings (lr 2e-3 constant after 100 warm-up steps, EMA 0.995, batch 64, "
             "1,000 steps)", OLD, None),
    "cosine": ('+ lr_schedule = "cosine" (to 0 at the last step)', COSINE, None),
    "ema998": ("+ ema_decay = 0.998", [*OLD, "--set", "train.ema_decay=0.998"], None),
    "s2000": ("2,000 steps", [*OLD, "--set", "train.steps=2000"], None),
    "s3000": ("3,000 steps", [*OLD, "--set", "train.steps=3000"], "s2000"),
    "noattn": ("no attention at 8x8 (15% cheaper steps), 1,160 steps", [*OLD, *NO_ATTENTION, "--set",
               "train.steps=1160"], None),
    "emawarm": ("cosine + EMA warm-up (diffusers' (1+n)/(10+n), capped at 0.995)",
                [*COSINE, "--set", "train.ema_warmup=true"], None),
    "b32": ("cosine, batch 32 x 1,770 steps (same training time: 115 vs 203 ms a step)",
            [*COSINE, "--set", "train.batch_size=32", "--set", "train.steps=1770"], None),
    "b16": ("cosine, batch 16 x 2,800 steps (same training time: 72 ms a step)",
            [*COSINE, "--set", "train.batch_size=16", "--set", "train.steps=2800"], None),
    "ema99": ("cosine + ema_decay = 0.99", [*COSINE, "--set", "train.ema_decay=0.99"], None),
    "raw": ("cosine, sampled from the raw weights (no EMA; cosine, emawarm and ema99 share them)",
            [*COSINE, "--set", "sample.use_ema=false", "--set", "eval.use_ema=false"], None),
    "ema99s1120": ("cosine + ema_decay = 0.99, 1,120 steps (bits/dim on 32 images instead of 64 pays for them): "
                   "**shipped**", [*COSINE, "--set", "train.ema_decay=0.99", "--set", "train.steps=1120"], None),
}


@dataclass(frozen=True)
class Plan:
    """Where the ablation runs and what it writes: the measurement, or the smoke test."""

    recipe: Path = RECIPE
    runs: Path = ROOT / "runs"
    num_samples: int = 1000
    extra: tuple[str, ...] = ()  # overrides after each setting's own
    json_file: Path = ROOT / "benchmarks" / "quickstart_ablation.json"
    images: Path = ROOT / "docs" / "images"

    def run_dir(self, name: str) -> Path:
        return self.runs / f"q15_{name}"


SMOKE_SETTINGS = ("base", "s2000")


def smoke_plan(out: Path) -> Plan:
    tiny = ROOT / "ddpm_kit" / "testing" / "tiny.toml"
    return Plan(tiny, out / "runs", 8, ("--set", "train.steps=2", "--set", "train.batch_size=8", "--set",
                                        "sample.batch_size=8"), out / "quickstart_ablation.json", out)


def ddpm_kit(*args: str) -> None:
    """``ddpm-kit ARGS`` in this process, accelerate's shared state reset afterwards."""
    from accelerate.state import AcceleratorState

    from ddpm_kit.cli import main

    try:
        main([str(a) for a in args])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def train(name: str, plan: Plan) -> None:
    _, overrides, resume_from = SETTINGS[name]
    args = ["run", str(plan.recipe), "--run-dir", str(plan.run_dir(name)), "--no-sample", "--no-eval", *SAMPLE_BATCH,
            *overrides, *plan.extra]
    if resume_from:
        shutil.rmtree(plan.run_dir(name), ignore_errors=True)
        shutil.copytree(plan.run_dir(resume_from), plan.run_dir(name))
        args += ["--resume", "latest"]
    else:
        args += ["--overwrite"]
    ddpm_kit(*args)


def measure(name: str, plan: Plan) -> None:
    from benchmarks import sample_quality

    sample_quality.main([str(plan.run_dir(name)), "-n", str(plan.num_samples)])


def collect(name: str, plan: Plan) -> dict | None:
    run = RunFolder(plan.run_dir(name))
    fid = run.read_json(run.results_file("fid"))
    if not fid:
        return None
    if int(fid["fid_samples"]) != plan.num_samples or "fid_stderr" not in fid:
        return None  # measure() scores it (again: the samples are kept, only the features are recomputed)
    recipe = tomllib.loads(run.recipe_file.read_text())
    logs = [r for r in run.read_metrics() if "loss" in r]
    last = [r["loss"] for r in logs if r["step"] > recipe["train"]["steps"] - 300]
    return {"setting": SETTINGS[name][0], "steps": recipe["train"]["steps"],
            "batch_size": recipe["train"]["batch_size"], "fid": fid["fid"], "fid_stderr": fid["fid_stderr"],
            "floor": fid["fid_real_floor"], "fid_over_floor": fid["fid"] / fid["fid_real_floor"],
            "confident": fid["confident"], "confident_stderr": fid["confident_stderr"],
            "confident_real": fid["confident_real"], "final_loss": sum(last) / len(last)}


# (setting, setting it is compared with): the pairs docs/evaluation.md quotes beside the table
PAIRS = [("ema99", "cosine"), ("emawarm", "cosine"), ("raw", "ema99"), ("b32", "cosine"), ("ema99s1120", "ema99"),
         ("s3000", "s2000"), ("ema99s1120", "s2000")]


def paired_differences(rows: dict[str, dict], plan: Plan, rounds: int = 200) -> list[tuple[str, str, dict[str, float]]]:
    """Each setting minus ``base`` on the same image indices (into its row), and each of ``PAIRS``
    present (returned): image i starts from the same noise in every run (samples of two settings
    correlate ~0.97 pixel by pixel), so resampling the indices jointly gives a standard error of the
    difference several times smaller than either FID's."""
    import numpy as np
    import torch

    from ddpm_kit.images import to_model_range
    from ddpm_kit.engine import EvalContext
    from ddpm_kit.features import (FeatureStats, cached_classifier, features_and_probs, frechet_distance,
                                   frechet_distance_stderr)
    from ddpm_kit.plugins import get_registry
    from ddpm_kit.workflow import load_run

    components, run = load_run(get_registry(), plan.run_dir("base"))
    context = EvalContext(components, None, torch.device("cpu"), run)
    net, _ = cached_classifier(context.data_key(), *context.labelled("train"))
    reference = FeatureStats.fit(np.asarray(features_and_probs(net, context.images("test"))[0]))
    features = {}
    for name in rows:
        stored = RunFolder(plan.run_dir(name)).read_samples(RunFolder.metric_sample_name(plan.num_samples))
        f, p = features_and_probs(net, to_model_range(stored.images))
        features[name] = np.asarray(f), (np.asarray(p).max(1) > 0.9).astype(float)

    def difference(name: str, other: str) -> dict[str, float]:
        (f, c), (f_other, c_other) = features[name], features[other]
        return {"fid": frechet_distance(reference, f) - frechet_distance(reference, f_other),
                "fid_stderr": frechet_distance_stderr(reference, f, baseline=f_other, rounds=rounds),
                "confident": float((c - c_other).mean()),
                "confident_stderr": float((c - c_other).std(ddof=1) / np.sqrt(len(c)))}

    for name, row in rows.items():
        d = difference(name, "base")
        row["fid_minus_base"], row["fid_minus_base_stderr"] = d["fid"], d["fid_stderr"]
        row["confident_minus_base"], row["confident_minus_base_stderr"] = d["confident"], d["confident_stderr"]
    return [(a, b, difference(a, b)) for a, b in PAIRS if a in rows and b in rows]


# ms per training step of the quickstart's UNet by batch size on this 2-core CPU (fp32 eager, 3 rounds
# interleaved): a setting's cost in batch-64 steps is steps * MS_PER_STEP[batch] / MS_PER_STEP[64].
MS_PER_STEP = {16: 72, 32: 115, 64: 203}
LONGER = ("base", "s2000", "s3000")  # the constant-lr quickstart trained longer: the curve
SHIPPED = "ema99s1120"  # the setting recipes/quickstart.toml ships


def cost(row: dict) -> float:
    ms = MS_PER_STEP.get(row["batch_size"], MS_PER_STEP[64] * row["batch_size"] / 64)  # unmeasured: linear
    return row["steps"] * ms / MS_PER_STEP[64]


def value(row: dict, key: str) -> tuple[float, float]:
    """A row's FID/floor or confident fraction, with its standard error."""
    if key == "fid_over_floor":
        return row[key], row["fid_stderr"] / row["floor"]
    return row[key], row["confident_stderr"]


def plot_curve(rows: dict[str, dict], shipped: str, path: Path) -> None:
    """FID/floor and the confident fraction against training cost: the constant-lr quickstart
    trained longer, and the shipped setting."""
    from ddpm_kit.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    curve = [rows[n] for n in LONGER if n in rows]
    real = curve[0]["confident_real"]
    for ax, key, goal in zip(axes, ("fid_over_floor", "confident"), (2.0, real - 0.10)):
        points = [value(r, key) for r in curve]
        ax.errorbar([cost(r) for r in curve], [v for v, _ in points], yerr=[e for _, e in points], fmt="o-",
                    capsize=3, label="constant lr, trained longer (± 1 SE)")
        if shipped in rows:
            v, e = value(rows[shipped], key)
            ax.errorbar([cost(rows[shipped])], [v], yerr=[e], fmt="s", capsize=3, color="C3",
                        label=f"shipped quickstart ({shipped})")
        if key == "confident":
            ax.axhline(real, color="gray", ls=":", label="real digits")
        ax.axhline(goal, color="gray", ls="--", label="goal")
        ax.set(xlabel="training cost (batch-64 steps; ~0.24 s each on this CPU)",
               ylabel="FID@1000 / floor@1000" if key == "fid_over_floor" else "confident fraction (p > 0.9)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_differences(rows: dict[str, dict], path: Path) -> None:
    """Each setting minus the old quickstart, paired (± 1 SE): left is better for FID, right for
    the confident fraction."""
    from ddpm_kit.plots import _pyplot

    plt = _pyplot()
    names = [n for n in rows if n != "base"][::-1]
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.4 * len(names) + 1.2), sharey=True)
    for ax, key, label in zip(axes, ("fid_minus_base", "confident_minus_base"),
                              ("FID@1000 - old quickstart's (lower is better)",
                               "confident - old quickstart's (higher is better)")):
        ax.errorbar([rows[n][key] for n in names], range(len(names)), xerr=[rows[n][f"{key}_stderr"] for n in names],
                    fmt="o", capsize=3)
        ax.axvline(0, color="gray", lw=1)
        ax.set(xlabel=label, yticks=range(len(names)), yticklabels=[f"{n} ({cost(rows[n]):.0f})" for n in names])
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", nargs="*", default=[], choices=sorted(SETTINGS), metavar="SETTING",
                        help=f"train and measure these settings first ({', '.join(SETTINGS)})")
    parser.add_argument("--smoke", action="store_true", help=f"settings {', '.join(SMOKE_SETTINGS)} of the tiny "
                        "recipe, 2 steps, 8 samples, in --out")
    parser.add_argument("--out", type=Path, help="folder for the JSON and the plots (and the smoke runs)")
    args = parser.parse_args(argv)
    plan = Plan()
    if args.smoke:
        if args.out is None:
            parser.error("--smoke needs --out (it must not replace the published figures)")
        plan, args.run = smoke_plan(args.out), list(SMOKE_SETTINGS)
    elif args.out is not None:
        plan = replace(plan, json_file=args.out / "quickstart_ablation.json", images=args.out)
    for name in args.run:
        if not (plan.run_dir(name) / "model").is_dir():
            train(name, plan)
        if collect(name, plan) is None:
            measure(name, plan)
    rows = {name: row for name in SETTINGS if (row := collect(name, plan)) is not None}
    pairs = paired_differences(rows, plan) if "base" in rows else []
    print("| setting | steps x batch | FID@1000 / floor@1000 | confident (real) | FID - base (paired) | "
          "confident - base (paired) | loss, last 300 steps |")
    print("|---|---|---|---|---|---|---|")
    for row in rows.values():
        print(f"| {row['setting']} | {row['steps']} x {row['batch_size']} | {row['fid']:.2f} ± {row['fid_stderr']:.2f}"
              f" / {row['floor']:.2f} = {row['fid_over_floor']:.2f}x | {row['confident']:.3f} ± "
              f"{row['confident_stderr']:.3f} ({row['confident_real']:.3f}) | "
              f"{row.get('fid_minus_base', 0):+.2f} ± {row.get('fid_minus_base_stderr', 0):.2f} | "
              f"{row.get('confident_minus_base', 0):+.3f} ± {row.get('confident_minus_base_stderr', 0):.3f} | "
              f"{row['final_loss']:.4f} |")
    print("\n| comparison (same sample indices) | FID | confident |\n|---|---|---|")
    for a, b, d in pairs:
        print(f"| {a} - {b} | {d['fid']:+.2f} ± {d['fid_stderr']:.2f} | {d['confident']:+.3f} ± "
              f"{d['confident_stderr']:.3f} |")
    plan.json_file.parent.mkdir(parents=True, exist_ok=True)
    plan.json_file.write_text(json.dumps(rows, indent=2) + "\n")
    if {"base", "s2000"} <= set(rows):
        plot_curve(rows, SHIPPED, plan.images / "quickstart_fid_vs_steps.png")
    if "base" in rows:
        plot_differences(rows, plan.images / "quickstart_ablation.png")


if __name__ == "__main__":
    main()
