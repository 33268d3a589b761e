"""Draw docs/images/architecture.png: the path of one recipe key from the TOML file to an object,
and the path of one training step through the engine, each box naming the code that does it.

    .venv/bin/python scripts/draw_architecture.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPE_KEY = [  # (what happens, where)
    ('diffusion.variance = { name = "fixed_beta" }', "recipe file (TOML), --set overrides, extends"),
    ("Recipe.model_validate: the recipe's own keys", "recipe.py (pydantic)"),
    ('COMPONENT_KEYS["diffusion.variance"] -> "variance"', "recipe.py: the one key -> kind table"),
    ("registry.resolve('variance', 'fixed_beta')", "plugins/registry.py: the provider, or 'did you mean'"),
    ("validate_params: the factory's signature", "plugins/parameters.py (engine context from KINDS left out)"),
    ("build_components walks the same table", "engine/components.py: build_at(key)"),
    ("FixedBeta() -> GaussianDiffusion(...)", "builtins/variances.py -> diffusion.py"),
]
TRAINING_STEP = [
    ("Trainer.train_step(step)", "engine/training.py: one optimizer step"),
    ("draw(step, micro): the global batch", "seeds.step_generator(seed, step, micro)"),
    ("rows, flips, labels, t, noise; dropout masks", "engine/batches.py, engine/dropout.py"),
    ("forward_backward: diffusion.training_losses", "diffusion.py + the objective plugin"),
    ("clip_gradients: finite or skip / stop", "engine/training.py, engine/stops.py"),
    ("optimizer.step, lr_schedule.step, ema.step", "accelerate, diffusers' EMAModel"),
    ("after_step: log, evaluate, checkpoint, grid, Ctrl-C", "runs.RunFolder writes every file"),
]


def column(ax, x: float, title: str, steps: list[tuple[str, str]], color: str) -> None:
    """A column of boxes joined by arrows, top to bottom."""
    from matplotlib.patches import FancyBboxPatch

    ax.text(x, 0.965, title, ha="center", va="center", fontsize=12, fontweight="bold")
    top, gap = 0.9, 0.128
    for i, (what, where) in enumerate(steps):
        y = top - i * gap
        ax.add_patch(FancyBboxPatch((x - 0.2, y - 0.045), 0.4, 0.09, boxstyle="round,pad=0.006",
                                    facecolor=color, edgecolor="#444444", linewidth=1))
        ax.text(x, y + 0.014, what, ha="center", va="center", fontsize=8.6, family="monospace")
        ax.text(x, y - 0.021, where, ha="center", va="center", fontsize=7.8, color="#333333", style="italic")
        if i:
            ax.annotate("", xy=(x, y + 0.047), xytext=(x, y + gap - 0.047),
                        arrowprops=dict(arrowstyle="->", color="#444444", lw=1.2))


def main() -> None:
    from ddpm_kit.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(12, 7.2))
    ax.set(xlim=(0, 1.03), ylim=(0.06, 1))
    ax.axis("off")
    column(ax, 0.21, "one recipe key -> an object", RECIPE_KEY, "#dbe9f6")
    column(ax, 0.76, "one training step", TRAINING_STEP, "#fde4cf")
    ax.annotate("", xy=(0.558, 0.9), xytext=(0.412, 0.132), arrowprops=dict(
        arrowstyle="->", color="#888888", lw=1, ls="--", connectionstyle="arc3,rad=-0.2"))
    ax.text(0.485, 0.3, "Trainer(components, run)\nbuilds once what it\nchecks: the seeded\nbackbone, the data,\n"
            "the trackers; fit()\nruns the steps", ha="center", va="center", fontsize=8, color="#555555")
    ax.annotate("", xy=(0.962, 0.9), xytext=(0.962, 0.132), arrowprops=dict(
        arrowstyle="->", color="#888888", lw=1, connectionstyle="arc3,rad=0.12"))
    ax.text(0.995, 0.52, "next\nstep", ha="center", va="center", fontsize=8, color="#555555")
    fig.tight_layout()
    out = ROOT / "docs" / "images" / "architecture.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
