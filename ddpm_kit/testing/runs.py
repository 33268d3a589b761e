"""A tiny run for tests: the recipe, a diffusion from names, and training it in this process."""

from __future__ import annotations

from functools import lru_cache
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


def cli(*args, threads: int | None = None):
    """``ddpm-kit ARGS`` in this process, as a subprocess would run it but without starting an
    interpreter and importing torch and diffusers again (seconds a call): a
    ``subprocess.CompletedProcess`` with the exit status, stdout and stderr. Accelerate's shared
    state is reset afterwards and the commands plugins added are removed (a later call adds the
    installed ones again). ``threads=1`` computes as a subprocess under ``OMP_NUM_THREADS=1``."""
    import contextlib
    import io
    import subprocess

    import torch
    from accelerate.state import AcceleratorState

    from ..cli import cli as group, main

    out, err, code = io.StringIO(), io.StringIO(), 0
    before, commands = torch.get_num_threads(), dict(group.commands)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            torch.set_num_threads(threads or before)
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        finally:
            torch.set_num_threads(before)
            AcceleratorState._reset_state(reset_partial_state=True)
            group.commands.clear()
            group.commands.update(commands)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def train_tiny_run(folder: str | Path, *overrides: str, recipe: str | Path = TINY, sample: bool = True,
                   evaluate: bool = False) -> Path:
    """``ddpm-kit run`` of ``recipe`` (the tiny one by default) into ``folder``, in this process, with
    ``--set`` ``overrides`` (``"train.steps=4"``, ``'sample.sampler={name="heun", steps=5}'``);
    returns the run folder. A failure raises ``AssertionError`` with the command's error."""
    folder = Path(folder)
    args = ["run", str(recipe), "--run-dir", str(folder), *(a for o in overrides for a in ("--set", o))]
    args += ([] if sample else ["--no-sample"]) + ([] if evaluate else ["--no-eval"])
    result = cli(*args)
    assert result.returncode == 0, f"ddpm-kit {' '.join(args)} failed: {result.stderr.strip()[-2000:]}"
    return folder


def statistical_seed(offset: int = 0) -> int:
    """A seed for a statistical test: ``offset`` plus 10,007 x $DDPM_KIT_TEST_SEED (default 0). A
    statistical test passes for any value (ddpm-kit's scripts/seed_sweep.py runs its own over 20)."""
    import os

    return offset + 10_007 * int(os.environ.get("DDPM_KIT_TEST_SEED", "0"))


@lru_cache(maxsize=None)
def ancestral_samples(param: str, variance: str, seed: int):
    """64 images of 32x32 pixels drawn by ancestral sampling (Algorithm 2, float64, no clipping)
    from the Gaussian oracle's exact network, linear schedule, T = 1000: x_T from ``seed``, the
    chain's noise from ``seed + 1``. Cached: tests that ask for the same draw share it."""
    import torch

    from ..builtins.samplers import sample_ancestral
    from ..plugins import get_registry
    from . import oracle

    d = diffusion(get_registry(entry_points=False), parameterization=param, variance=variance)
    x_T = torch.randn(64, 1, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return sample_ancestral(d, oracle.EpsOracle(oracle.linear_betas(), param), x_T,
                            generator=torch.Generator().manual_seed(seed + 1), clip_denoised=False)
