"""Analytic-DPM for ddpm-kit: the KL-optimal reverse variance of a trained model (see README.md).

    ddpm-kit analytic-gamma RUN                          # Gamma_t of the run's EMA weights
    ddpm-kit sample RUN --sampler analytic --steps 10    # K-step sampling with sigma*^2
"""

from __future__ import annotations

from pathlib import Path

import click

from ddpm_kit.api import hookimpl, on_original_timesteps, sample_ancestral, spaced_timesteps

from .analytic import AnalyticVariance, analytic_diffusion, estimate_gamma, trajectory_variances
from .runs import estimate_run_gamma, load_run_gamma

__all__ = ["AnalyticVariance", "analytic_diffusion", "estimate_gamma", "trajectory_variances"]


def analytic(steps: int = 50, clip_denoised: bool = True, num_timesteps: int | None = None, diffusion=None,
             run_dir: Path | None = None):
    """Ancestral sampling over ``steps`` respaced timesteps with Analytic-DPM's optimal variance,
    from the Gamma that `ddpm-kit analytic-gamma RUN` estimated for the run's EMA weights."""
    if num_timesteps is not None and not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must lie in 1..{num_timesteps} (the schedule's T), got {steps}")
    gamma = load_run_gamma(run_dir, num_timesteps)
    keep = spaced_timesteps(num_timesteps, steps)

    def sample(d, model, x_T, *, generator=None, callback=None, noise=None):
        short, timestep_map = analytic_diffusion(d, gamma[keep], steps)
        return sample_ancestral(short, on_original_timesteps(model, timestep_map), x_T, generator=generator,
                                callback=callback, noise=noise, clip_denoised=clip_denoised)
    return sample


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

        with tqdm(desc="Gamma_t", unit="t") as bar:
            path = estimate_run_gamma(run_dir, images, batch_size, progress=bar.update)
        click.echo(f"wrote {path}")
