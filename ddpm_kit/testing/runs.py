"""A tiny run for tests: the recipe, a diffusion from names, and training it in this process."""

from __future__ import annotations

from pathlib import Path

TINY = Path(__file__).with_name("tiny.toml")
"""8x8 scikit-learn digits, a 0.2M-parameter UNet (``cpu-tiny``), T = 50, 6 steps: a run in seconds."""


def diffusion(registry=None, schedule: str = "linear", parameterization: str = "eps", variance: str = "fixed_beta",
              decoder: str = "discretized_gaussian", T: int = 1000, **decoder_params):
    """A ``GaussianDiffusion`` from component names, built by ``registry`` (default: every installed
    plugin's), e.g. ``diffusion(schedule="cosine", variance="learned_range", T=50)``."""
    from ..diffusion import GaussianDiffusion
    from ..plugins import get_registry

    registry = registry or get_registry()
    return GaussianDiffusion(registry.build("schedule", schedule, {"T": T}),
                             registry.build("parameterization", parameterization),
                             registry.build("variance", variance), registry.build("decoder", decoder, decoder_params))


def train_tiny_run(folder: str | Path, *overrides: str, recipe: str | Path = TINY, sample: bool = True,
                   evaluate: bool = False) -> Path:
    """``ddpm-kit run`` of ``recipe`` (the tiny one by default) into ``folder``, in this process, with
    ``--set`` ``overrides`` (``"train.steps=4"``, ``'sample.sampler={name="heun", steps=5}'``);
    returns the run folder. A failure raises ``AssertionError`` with the command's error line."""
    import contextlib
    import io

    from accelerate.state import AcceleratorState

    from ..cli import main

    folder = Path(folder)
    args = ["run", str(recipe), "--run-dir", str(folder)]
    args += [a for o in overrides for a in ("--set", o)]
    args += [] if sample else ["--no-sample"]
    args += [] if evaluate else ["--no-eval"]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            main(args)
    except SystemExit as exc:
        if exc.code:
            raise AssertionError(f"ddpm-kit {' '.join(args)} failed: {err.getvalue().strip().splitlines()[-1:]}") from None
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    return folder
