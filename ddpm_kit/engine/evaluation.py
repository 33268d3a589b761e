"""Evaluation of a run: every metric on every process, the work split by batch and gathered;
``compute_metrics`` is the one metric loop (``evaluate`` and ``Trainer.evaluation`` call it)."""

from __future__ import annotations

import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from ..conditioning import bind
from ..diffusion import GaussianDiffusion
from ..errors import DdpmKitError, PluginError
from ..images import to_model_range
from ..interfaces import Model
from ..noise import ImageNoise
from ..plugins import Provider, plugin_code
from ..progress import progress_bar
from ..recipe import Component
from ..runs import RunFolder
from ..seeds import evaluation_sample_seed
from .checkpoints import load_run_model
from .components import Components
from .distributed import LocalState, describe, gather_in_order, map_batches, my_batches
from .sampling import drawn_by, sample_images, sample_labels


@dataclass
class EvalContext:
    """What a Metric gets: the trained model, the diffusion, data access, the processes to share
    work with (``map_rows``, ``map_batches``) and a place for files."""

    components: Components
    model: torch.nn.Module
    device: torch.device
    run: RunFolder
    seed: int = 0
    state: Any = field(default_factory=LocalState)
    sample_tag: str | None = None  # samples drawn by another sampler than the recipe's (cached apart)
    out: Path | None = None  # where arrays and plots go (default: the run's eval/)
    keep_samples: bool = True  # False during training: weights change, so samples are never reused
    use_ema: bool = True  # which weights ``model`` holds (samples drawn from the others are not reused)
    samples_seed: int | None = field(default=None, init=False)  # the seed of the last samples handed out

    @property
    def eval_dir(self) -> Path:
        return self.out or self.run.eval

    @property
    def diffusion(self) -> GaussianDiffusion:
        return self.components.diffusion

    @property
    def is_main_process(self) -> bool:
        return self.state.is_main_process

    def images(self, split: str = "test", limit: int | None = None) -> torch.Tensor:
        """Data in [-1, 1], the first ``limit`` images of a split."""
        return to_model_range(self.components.data.rows(split)[:limit or None])

    def labelled(self, split: str, label_column: str = "label") -> tuple[torch.Tensor, torch.Tensor]:
        """A split's images in [-1, 1] and its integer labels."""
        try:
            labels = self.components.data.label_column(split, label_column)
        except DdpmKitError as exc:
            raise DdpmKitError(f"{exc}; the 'fid' metric trains its feature network on labels") from None
        return self.images(split), labels

    def data_key(self) -> dict[str, Any]:
        """What identifies the data as a feature network sees it (for caching)."""
        return self.components.recipe.model_dump(mode="json", include={"data"})

    def samples(self, n: int) -> torch.Tensor:
        """``n`` samples in [-1, 1] on every process (see ``labelled_samples``)."""
        return self.labelled_samples(n)[0]

    def labelled_samples(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``n`` samples in [-1, 1] on every process and the class each was drawn for (None for an
        unconditional run): the run's final samples if there are enough and the same sampler,
        guidance and weights drew them, else drawn now by all processes together (and kept as
        samples/eval_<n>[_<tag>].npz, reused on the same condition)."""
        seed = self.samples_seed = evaluation_sample_seed(self.seed)
        if not self.keep_samples:
            images = sample_images(self.components, self.model, n, self.device, seed=seed, state=self.state)
            return to_model_range(images), sample_labels(self.components, n)
        mine = drawn_by(self.components, self.use_ema)
        name = self.run.metric_sample_name(n, self.sample_tag)
        for stored, drawn_with in ((self.run.read_samples(), self.components.recipe.sample.seed),
                                   (self.run.read_samples(name), seed)):
            if stored is not None and stored.drawn_by == mine and len(stored.images) >= n:
                self.samples_seed = drawn_with
                labels = stored.labels
                return to_model_range(stored.images[:n]), None if labels is None else labels[:n]
        images = sample_images(self.components, self.model, n, self.device, seed=seed, state=self.state)
        labels = sample_labels(self.components, n)
        if self.is_main_process:
            self.run.save_samples(images, name, labels, mine)
        self.state.wait_for_everyone()
        return to_model_range(images), labels

    def image_noise(self, rows: range) -> ImageNoise:
        """Standard normal draws for the images ``rows`` of a split, each from its own generator
        (the run's seed, the image's index): an image's noise, and so its figure, is the same
        whichever batch or process computes it (pass it to a sampler or ``calc_bpd_loop`` as ``noise``)."""
        return ImageNoise(self.seed, rows, self.device)

    def model_for(self, split: str, rows: range) -> Model:
        """The model as a metric calls it on ``rows`` of ``split``: with their class labels bound in a
        conditional run (the conditional likelihood), else the model itself."""
        labels = self.components.data.labels(split)
        return bind(self.model, None if labels is None else labels[rows.start:rows.stop])

    def map_batches(self, total: int, batch_size: int, work: Callable[[range], np.ndarray],
                    desc: str | None = None) -> np.ndarray:
        """``work(rows)`` for batches of 0..total-1 split over the processes; all results, in
        order, on every process. A progress bar on the main process when ``desc`` is given."""
        progress = partial(progress_bar, desc=desc, unit="batch", enabled=desc is not None and self.is_main_process)
        return map_batches(self.state, total, batch_size, work, progress)

    def map_rows(self, x: torch.Tensor, fn: Callable[[torch.Tensor], np.ndarray], batch_size: int = 256,
                 desc: str | None = None) -> np.ndarray:
        """``fn`` over row batches of ``x`` (features of images, say), split over the processes."""
        return self.map_batches(len(x), batch_size, lambda rows: fn(x[rows.start:rows.stop]), desc)

    def my_share(self, total: int, batch_size: int) -> list[range]:
        """This process's batches of 0..total-1 (for metrics that reduce across processes themselves)."""
        return my_batches(self.state, total, batch_size)

    def cached(self, key: dict[str, Any], compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Arrays that depend only on ``key`` (the real data's feature statistics for an extractor
        and data settings, say): read from the cache when every process can read them, else
        computed by all processes together and cached by the main process."""
        from ..features import save_arrays, stats_path

        path = stats_path(key)
        try:
            with np.load(path) as stored:
                arrays = dict(stored)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            arrays = None
        if all(gather_in_order(self.state, [(self.state.process_index, arrays is not None)])):
            return arrays
        arrays = compute()
        if self.is_main_process:
            save_arrays(path, arrays)
        return arrays

    def save_array(self, name: str | Path, array: np.ndarray) -> Path:
        """<eval_dir>/<name>.npy (or the path a ``RunFolder`` method named), written by the main process."""
        path = name if isinstance(name, Path) else self.run.eval_file(f"{name}.npy", self.out)
        if self.is_main_process:
            self.run.save_array(path, array)
        return path


def compute_metrics(context: EvalContext, specs: list[Component],
                    overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Every metric of ``specs`` (its parameters, then ``overrides[name]``) on ``context``, in
    order, on every process; their figures in one dict."""
    results: dict[str, Any] = {}
    owner: dict[str, str] = {}
    registry = context.components.registry
    for spec in specs:
        params = {**spec.params, **(overrides or {}).get(spec.name, {})}
        metric, provider = registry.build("metric", spec.name, params), registry.resolve("metric", spec.name)
        with torch.inference_mode(), plugin_code(provider, "failed while computing"):
            figures = metric.compute(context)
        for key, value in checked_figures(provider, figures).items():
            if key in owner or key in RESERVED_FIGURES:
                who = f"metric '{owner[key]}'" if key in owner else "the engine"
                raise PluginError(f"metric '{spec.name}' (plugin '{provider.plugin.name}') returned '{key}', which "
                                  f"{who} already reports; a metric's figures must have their own names "
                                  f"(e.g. '{spec.name}_{key}')")
            owner[key], results[key] = spec.name, value
    return results


RESERVED_FIGURES = ("weights", "sampler")  # what evaluate() adds beside the metrics' figures


def checked_figures(provider: Provider, figures: Any) -> dict[str, float | int | str]:
    """A metric's figures as JSON-ready values: a dict of names to numbers (a NumPy scalar or a
    0-d tensor is read with ``item()``) or short text; anything else is refused by name."""
    def refuse(why: str) -> PluginError:
        return PluginError(f"{provider.label} returned {why}; Metric.compute returns {{name: number or text}}")

    if not isinstance(figures, dict):
        raise refuse(type(figures).__name__)
    out = {}
    for key, value in figures.items():
        if isinstance(value, (np.generic, torch.Tensor)) and getattr(value, "ndim", 0) == 0:
            value = value.item()
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise refuse(f"{key!r}: {type(value).__name__}")
        out[key] = value
    return out


def evaluate(components: Components, run: RunFolder, device: torch.device, *, use_ema: bool | None = None,
             metrics: list[Component] | None = None, overrides: dict[str, dict[str, Any]] | None = None,
             state=LocalState(), sample_tag: str | None = None, only: str | None = None) -> dict[str, Any]:
    """The evaluation stage: ``metrics`` (default: the recipe's ``eval.metrics``) of the run's final
    weights, on every process of ``state``; the main process prints them and writes
    eval/metrics.json, or eval/<only>[_<sample_tag>].json when one metric was asked for."""
    started = time.time()
    use_ema = components.recipe.eval.use_ema if use_ema is None else use_ema
    model = load_run_model(components, run, use_ema=use_ema, device=device)
    context = EvalContext(components, model, device, run, seed=components.recipe.run.seed, state=state,
                          sample_tag=sample_tag, use_ema=use_ema)
    results = compute_metrics(context, components.recipe.eval.metrics if metrics is None else metrics, overrides)
    results["weights"] = "ema" if use_ema else "raw"
    if sample_tag is not None:
        results["sampler"] = sample_tag
    if state.is_main_process:
        for key, value in results.items():
            click.echo(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
        run.save_results(results, only, None if only is None else sample_tag)
        run.add_to_summary(eval_seconds=time.time() - started)
        run.set_in_summary(eval_processes=describe(state))
    state.wait_for_everyone()
    return results
