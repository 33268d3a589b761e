"""Gamma of a finished run: estimated by ``ddpm-kit analytic-gamma RUN`` into RUN/analytic/gamma.json,
tied to the digest of the weights it was estimated with."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ddpm_kit.api import CannotSample, atomic_file, open_run, weights_digest

from .analytic import estimate_gamma

GAMMA_FILE = Path("analytic") / "gamma.json"


def estimate_run_gamma(run_dir: Path, images: int = 256, batch_size: int = 256, seed: int = 0,
                       progress=None) -> Path:
    """Gamma_t at every timestep of the run's EMA weights, by Monte Carlo over its first ``images``
    training images (one x_t per image and t), with standard errors; written to analytic/gamma.json.
    The timesteps are shared by the launch's processes; timestep t draws its noise from its own
    generator (seed, t), so the file is the same on one process and on several. ``progress``: a
    tqdm bar (its total is set to T; updated on the main process)."""
    run = open_run(run_dir)
    x0 = run.images("train", images)
    T = run.diffusion.num_timesteps

    def timesteps(rows: range) -> np.ndarray:  # [len(rows), 2]: Gamma_t and its standard error
        out = []
        for t in rows:
            generator = torch.Generator(device=run.device).manual_seed(seed * 1_000_003 + t)
            mean, error = estimate_gamma(run.diffusion, run.model, x0, [t], batch_size=batch_size, generator=generator)
            out.append([float(mean[0]), float(error[0])])
        return np.asarray(out)

    if progress is not None:
        progress.total = T
    both = run.map_batches(T, max(1, T // 100), timesteps, None if progress is None else progress.update)
    path = Path(run_dir) / GAMMA_FILE
    if run.is_main_process:
        with atomic_file(path) as tmp:  # a kill mid-write leaves no half file
            tmp.write_text(json.dumps({"weights_sha256": run.weights_digest, "weights": "ema", "images": len(x0),
                                       "seed": seed, "processes": run.state.num_processes,
                                       "gamma": both[:, 0].tolist(), "stderr": both[:, 1].tolist()}))
    return path


def load_run_gamma(run_dir: Path | None, num_timesteps: int) -> torch.Tensor:
    """The Gamma estimated for this run's current EMA weights; ``CannotSample`` (with what to run)
    when there is none, or when the weights changed since."""
    if run_dir is None:
        raise CannotSample("sampler 'analytic' samples a finished run: `ddpm-kit analytic-gamma RUN`, then "
                           "`ddpm-kit sample RUN --sampler analytic --steps K`")
    path = Path(run_dir) / GAMMA_FILE
    if not path.is_file():
        raise CannotSample(f"the analytic variance needs {path}: run `ddpm-kit analytic-gamma {run_dir}` first")
    try:
        stored = json.loads(path.read_text())
        gamma, digest = stored["gamma"], stored["weights_sha256"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:  # a truncated or foreign file
        raise CannotSample(f"{path} is damaged ({type(exc).__name__}): run `ddpm-kit analytic-gamma {run_dir}` "
                           "again") from exc
    if digest != weights_digest(run_dir) or len(gamma) != num_timesteps:
        raise CannotSample(f"{path} was estimated for other weights: run `ddpm-kit analytic-gamma {run_dir}` again")
    return torch.tensor(gamma, dtype=torch.float64)
