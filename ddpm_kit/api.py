"""The public plugin API: every name a plugin package needs, in one module.

Write plugins against ``ddpm_kit.api`` only (``from ddpm_kit.api import hookimpl, Schedule, ...``);
every other module of ddpm_kit is internal and may change between releases. docs/writing-a-plugin.md
documents each name (its table "The public API"); tests/test_api.py fails when a documented name
disappears from here or a name here goes undocumented.
"""

from __future__ import annotations

from . import __version__
from .builtins.metrics import BitsPerDim
from .builtins.samplers import sample_ancestral
from .cache import atomic_file
from .diffusion import GaussianDiffusion, PMeanVariance
from .engine.evaluation import EvalContext
from .errors import DdpmKitError, PluginError
from .gaussian import approx_standard_normal_cdf, discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .hookspecs import hookimpl
from .interfaces import (CannotSample, Decoder, LearnedVariance, Metric, Model, Objective, Parameterization, Sampler,
                         Schedule, VarianceChoice)
from .noise import NoiseSource, randn_like
from .plugins import get_registry
from .respacing import on_original_timesteps, respace, spaced_timesteps, validate_steps

__all__ = [
    "__version__",
    "hookimpl", "get_registry",  # hooks and registration
    # interfaces (what a factory returns)
    "Schedule", "Parameterization", "VarianceChoice", "LearnedVariance", "Decoder", "Sampler", "Objective",
    "Metric", "Model", "CannotSample",
    "GaussianDiffusion", "PMeanVariance",  # the diffusion a sampler, objective or metric is handed
    "EvalContext", "BitsPerDim",  # what a metric is handed; the bound to subclass for another reverse process
    # helpers: a sampler's Gaussian draws, K-step samplers over a trained T-step chain, Algorithm 2, the bound's terms
    "randn_like", "NoiseSource", "spaced_timesteps", "validate_steps", "respace", "on_original_timesteps",
    "sample_ancestral",
    "mean_flat", "normal_kl", "discretized_gaussian_log_likelihood", "approx_standard_normal_cdf",
    "DdpmKitError", "PluginError", "atomic_file",  # errors (one line for the user; a plugin's failure); safe writes
    "FinishedRun", "open_run", "weights_digest",  # a finished run, for a plugin's own commands
]


class FinishedRun:
    """A finished run as a plugin command sees it (``ddpm_kit.api.open_run``): its folder, its
    diffusion, its trained network, its data, a digest of the weights (to tie statistics a plugin
    computes to the weights they came from), and the processes of the launch to share work with
    (``map_batches``: under ``accelerate launch`` every process takes its share)."""

    def __init__(self, run_dir, *, use_ema: bool = True, device=None) -> None:
        from .engine import load_run_model, process_state
        from .workflow import device_for, load_run

        self._components, run = load_run(get_registry(), run_dir)
        self.path, self.use_ema = run.path, use_ema
        self.state = process_state()
        self.device = device_for(self.state, device)
        self.diffusion: GaussianDiffusion = self._components.diffusion
        self.model = load_run_model(self._components, run, use_ema=use_ema, device=self.device)
        self.weights_digest: str = weights_digest(run.path, use_ema=use_ema)

    def images(self, split: str = "train", limit: int | None = None):
        """The first ``limit`` images of a split, in [-1, 1] (as the network was trained on them)."""
        from .images import to_model_range

        return to_model_range(self._components.data.rows(split)[:limit or None]).to(self.device)

    @property
    def is_main_process(self) -> bool:
        return self.state.is_main_process

    def map_batches(self, total: int, batch_size: int, work, progress=None):
        """``work(rows) -> np.ndarray`` over batches of 0..total-1, split over the launch's processes;
        every result, in index order, on every process. The batches do not depend on the number of
        processes, so neither does the answer when ``work`` seeds its randomness by ``rows``.
        ``progress(n)`` is called on the main process after each of its batches of ``n`` rows."""
        from .engine.distributed import map_batches

        def each(rows):
            out = work(rows)
            if progress is not None and self.is_main_process:
                progress(len(rows))
            return out
        return map_batches(self.state, total, batch_size, each)


def weights_digest(run_dir, *, use_ema: bool = True) -> str:
    """SHA-256 of a finished run's final weights (EMA unless ``use_ema=False``), without loading them
    into a network: what statistics a plugin computed from the weights are tied to."""
    from .runs import RunFolder, sha256

    return sha256(RunFolder(run_dir).weights_file(use_ema))


def open_run(run_dir, *, use_ema: bool = True, device=None) -> FinishedRun:
    """A finished run's diffusion, network (EMA weights unless ``use_ema=False``) and data."""
    return FinishedRun(run_dir, use_ema=use_ema, device=device)

