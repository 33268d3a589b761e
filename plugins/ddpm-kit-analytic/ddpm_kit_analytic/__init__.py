"""Analytic-DPM for ddpm-kit: the KL-optimal reverse variance of a trained model (see README.md).

    ddpm-kit analytic-gamma RUN                          # Gamma_t of the run's EMA weights
    ddpm-kit sample RUN --sampler analytic --steps 10    # K-step sampling with sigma*^2
    ddpm-kit evaluate RUN --metric bpd_analytic [--param steps=10]   # the bound with sigma*^2
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import click

from ddpm_kit.api import (BitsPerDim, DdpmKitError, hookimpl, on_original_timesteps, sample_ancestral,
                          spaced_timesteps, validate_steps)

from .analytic import (AnalyticVariance, analytic_diffusion, estimate_gamma, optimal_trajectory, optimal_variance,
                       trajectory_variances)
from .runs import estimate_run_gamma, load_run_gamma

__all__ = ["AnalyticBitsPerDim", "AnalyticVariance", "analytic_diffusion", "estimate_gamma", "optimal_trajectory",
           "optimal_variance", "trajectory_variances"]


TRAJECTORIES = ("even", "optimal")


def check_trajectory(kind: str) -> None:
    if kind not in TRAJECTORIES:
        raise DdpmKitError(f"trajectory must be one of {', '.join(TRAJECTORIES)}, got {kind!r}")


def choose_timesteps(d, gamma, steps: int, kind: str) -> list[int]:
    """The K timesteps to sample or bound on: evenly spaced, or the KL-optimal path (dynamic programming)."""
    T = validate_steps(steps, d.num_timesteps) and d.num_timesteps
    check_trajectory(kind)
    return spaced_timesteps(T, steps) if kind == "even" or steps == 1 else optimal_trajectory(d, gamma, steps)


def analytic(steps: int = 50, trajectory: str = "even", clip_pixel: float = 2.0, clip_denoised: bool = True,
             num_timesteps: int | None = None, diffusion=None, run_dir: Path | None = None):
    """Ancestral sampling over ``steps`` respaced timesteps with Analytic-DPM's optimal variance,
    from the Gamma that `ddpm-kit analytic-gamma RUN` estimated for the run's EMA weights; the
    timesteps evenly spaced or (``trajectory = "optimal"``) the path of the smallest bound.

    ``clip_pixel``: as the reference code samples, the standard deviation of the step into the
    first kept timestep is capped at clip_pixel pixel widths of mean absolute deviation,
    sigma <= clip_pixel (2 / 255) sqrt(pi / 2): the last step returns x0-hat of x at that timestep,
    which a network trained on little noise there cannot clean of a large sigma*. The reference
    uses 2 for the linear schedule, 1 for the cosine one; 0 turns it off. The bound is unaffected."""
    validate_steps(steps, num_timesteps)
    check_trajectory(trajectory)
    if clip_pixel < 0:
        raise ValueError(f"clip_pixel must be >= 0 (0: no clip), got {clip_pixel}")
    gamma = load_run_gamma(run_dir, num_timesteps)
    chains = {}  # the respaced diffusion of each trained one: the trajectory (a dynamic programme) once, not per batch

    def sample(d, model, x_T, *, generator=None, callback=None, noise=None):
        if d not in chains:
            keep = choose_timesteps(d, gamma, steps, trajectory)
            chains[d] = analytic_diffusion(d, gamma[keep], keep,
                                           clip_first=(clip_pixel * 2 / 255) ** 2 * math.pi / 2 or None)
        short, timestep_map = chains[d]
        return sample_ancestral(short, on_original_timesteps(model, timestep_map), x_T, generator=generator,
                                callback=callback, noise=noise, clip_denoised=clip_denoised)
    return sample


class AnalyticBitsPerDim(BitsPerDim):
    """The bound (eq. 5 of Ho et al.) in bits/dim with Analytic-DPM's sigma*^2, on all T steps or on
    ``steps`` K respaced ones, evenly spaced or the KL-optimal path (``trajectory = "optimal"``):
    figures ``bpd_analytic[_K][_optimal]``, ``..._stderr``, ..."""

    name = "bpd_analytic"

    def __init__(self, steps: int | None = None, trajectory: str = "even", limit: int | None = 256,
                 batch_size: int = 64, split: str = "test", timesteps_per_batch: int = 1,
                 clip_denoised: bool = False) -> None:
        super().__init__(limit, batch_size, split, timesteps_per_batch, clip_denoised, steps=steps)
        check_trajectory(trajectory)
        self.trajectory = trajectory

    @property
    def label(self) -> str:
        return super().label + ("_optimal" if self.trajectory == "optimal" else "")

    def chain(self, context):
        d = context.diffusion
        if not context.use_ema:
            raise DdpmKitError("metric 'bpd_analytic': Gamma is estimated for the EMA weights; drop --raw")
        gamma = load_run_gamma(context.run.path, d.num_timesteps)
        keep = choose_timesteps(d, gamma, d.num_timesteps if self.steps is None else self.steps, self.trajectory)
        short, timestep_map = analytic_diffusion(d, gamma[keep], keep)
        return short, lambda model: on_original_timesteps(model, timestep_map)


@hookimpl
def register_metrics(register):
    register("bpd_analytic", AnalyticBitsPerDim)


@hookimpl
def register_samplers(register):
    register("analytic", analytic)


@hookimpl
def register_commands(cli):
    @cli.command("analytic-gamma")
    @click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
    @click.option("--images", type=int, default=256, show_default=True, help="Training images in the Monte Carlo.")
    @click.option("--batch-size", type=int, default=256, show_default=True)
    def analytic_gamma(run_dir: Path, images: int, batch_size: int) -> None:
        """Estimate Gamma_t = E||eps(x_t, t)||^2 / d of RUN's EMA weights (Analytic-DPM) into RUN/analytic/."""
        from tqdm.auto import tqdm

        main = os.environ.get("RANK", "0") == "0"  # one bar, on the main process of a launch
        with tqdm(desc=f"Gamma_t ({images} images per timestep)", unit="t", disable=not main) as bar:
            path = estimate_run_gamma(run_dir, images, batch_size, progress=bar)
        click.echo(f"wrote {path}")
