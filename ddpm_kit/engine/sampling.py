"""Sampling from a model: batches split over processes, every image a function of (seed, index):
its x_T and step noise come from its own generator (``ImageNoise``), so it is the same whatever the
batch size or the number of processes, byte for byte for the same ``sample.batch_size`` (docs/training.md)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
import numpy as np
import torch

from ..conditioning import class_rows, guided
from ..errors import PluginError
from ..images import save_grid, to_uint8
from ..noise import ImageNoise
from ..plugins import Registry, plugin_code
from ..recipe import Component, Recipe, parse_override, recipe_to_dict, validate_recipe
from ..progress import progress_bar
from ..runs import RunFolder
from .checkpoints import load_run_model
from .components import Components
from .distributed import LocalState, describe, map_batches, my_batches
from .fast_paths import autocast_for, quiet_known_dynamo_warnings


@dataclass(frozen=True)
class SamplingOverride:
    """What ``sample`` and ``evaluate`` may change in a finished run's recipe for one call: the
    sampler (its name, its ``steps``, other parameters as KEY=VALUE texts), and for a conditional
    run the classes and guidance."""

    sampler: str | None = None
    steps: int | None = None
    classes: tuple[int, ...] = ()
    guidance_scale: float | None = None
    params: tuple[str, ...] = ()

    def sampler_params(self) -> dict[str, Any]:
        """``params`` (``--sampler-param variance=fixed_beta_tilde``) as a dict of TOML values."""
        pairs = (parse_override(text, flag="--sampler-param", example="eta=1.0") for text in self.params)
        return {".".join(key): value for key, value in pairs}

    def flags(self) -> str:
        """These changes as the command-line options that ask for them (what an error names)."""
        options = [("--sampler", self.sampler), ("--steps", self.steps), *(("--class", c) for c in self.classes),
                   ("--guidance-scale", self.guidance_scale), *(("--sampler-param", p) for p in self.params)]
        return " ".join(f"{flag} {value}" for flag, value in options if value is not None)

    def apply(self, recipe: Recipe, registry: Registry, source: str) -> Recipe:
        """The recipe (already valid, from ``source``) with these changes, validated again (a
        sampler's parameters, classes in range): what fails now is the options', and names them."""
        sampler = recipe.sample.sampler if self.sampler is None else Component(name=self.sampler)
        if self.steps is not None or self.params:
            steps = {} if self.steps is None else {"steps": self.steps}
            sampler = Component(name=sampler.name, **{**sampler.params, **steps, **self.sampler_params()})
        update: dict[str, Any] = {"sampler": sampler}
        if self.classes:
            update["classes"] = list(self.classes)
        if self.guidance_scale is not None:
            update["guidance_scale"] = self.guidance_scale
        changed = recipe.model_copy(update={"sample": recipe.sample.model_copy(update=update)})
        return validate_recipe(recipe_to_dict(changed), registry, self.flags() or source)

    def tag(self, recipe: Recipe) -> str | None:
        """What sets files of this call apart from the recipe's own (eval/<metric>_<tag>.json):
        ``<sampler>[-<steps>]`` when the sampler changed, ``w<scale>`` when the guidance did."""
        parts = []
        if self.sampler is not None or self.steps is not None or self.params:
            s = recipe.sample.sampler
            parts.append(f"{s.name}-{s.params['steps']}" if "steps" in s.params else s.name)
            parts[-1] += "".join(f"-{key}{value}" for key, value in self.sampler_params().items())
        if self.guidance_scale is not None:
            parts.append(f"w{self.guidance_scale:g}")
        return "_".join(parts) or None


def prepare_for_sampling(model: torch.nn.Module, components: Components) -> torch.nn.Module:
    """eval mode, plus ``sample.channels_last`` and ``sample.compile``."""
    s = components.recipe.sample
    model.eval()
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if s.compile:
        quiet_known_dynamo_warnings()
        model = torch.compile(model)
    return model


class Countdown:
    """The callback contract of ``interfaces.Sampler``, checked on one chain: ``i`` counts the steps
    left after this one, down to 0, so the first report tells the number of steps. ``kept`` turns
    False (and ``problem`` says why) at the first report that breaks it."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.previous: Any = None
        self.problem: str | None = None

    @property
    def kept(self) -> bool:
        return self.problem is None

    def see(self, step: Any) -> None:
        i = step.get("i") if isinstance(step, dict) else None
        if self.kept:
            if self.previous is None and not (isinstance(i, int) and i >= 0):
                self.problem = f"its first report has i={i!r}, not the number of steps left"
            elif self.previous is not None and i != self.previous - 1:
                self.problem = f"it reported i={i!r} after i={self.previous!r}"
            elif self.previous is None:
                self.total = i + 1
        self.previous = i


class StepBar:
    """One tqdm bar over every reverse step of this process's batches (main process only): its
    total from the first chain's countdown, or counting reports when a sampler breaks the contract
    (``problem``: the first break)."""

    def __init__(self, num_batches: int, enabled: bool) -> None:
        self.num_batches, self.problem = num_batches, None
        self.bar = progress_bar(total=None, desc="sample", unit="step", enabled=enabled)

    def __call__(self, countdown: Countdown) -> None:
        self.problem = self.problem or countdown.problem
        if self.bar.total is None and countdown.total is not None and countdown.kept:
            self.bar.total = countdown.total * self.num_batches
            self.bar.refresh()
        elif not countdown.kept and self.bar.total is not None:
            self.bar.total = None
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def drawn_by(components: Components, use_ema: bool) -> str:
    """What decides which images a run's sampling gives, besides the seed: the sampler and its
    parameters, the guidance and classes of a conditional run, and the weights (kept with the
    samples, and compared before a metric reuses them)."""
    s = components.recipe.sample
    return json.dumps({"sampler": s.sampler.model_dump(mode="json"), "guidance_scale": s.guidance_scale,
                       "classes": s.classes, "weights": "ema" if use_ema else "raw"}, sort_keys=True)


def sample_labels(components: Components, num_images: int) -> torch.Tensor | None:
    """The class of each sample of a conditional run: ``sample.classes`` (default: every class) in
    equal consecutive blocks, one grid row each; None for an unconditional run."""
    if components.num_classes is None:
        return None
    return class_rows(num_images, components.recipe.sample.classes or list(range(components.num_classes)))


@torch.inference_mode()
def sample_images(components: Components, model: torch.nn.Module, num_images: int, device: torch.device, *,
                  seed: int | None = None, callback: Callable[[dict[str, Any]], None] | None = None,
                  state=LocalState()) -> torch.Tensor:
    """``num_images`` samples as uint8 [N, C, H, W], on every process of ``state``.

    ``state`` (an accelerate ``PartialState``) splits the batches over its processes; by default
    this process samples alone. ``callback`` sees the steps of the batch that holds image 0. A
    conditional run draws image i of class ``sample_labels(...)[i]`` with ``sample.guidance_scale``.
    """
    s, data = components.recipe.sample, components.recipe.data
    labels = sample_labels(components, num_images)
    seed = s.seed if seed is None else seed
    model = prepare_for_sampling(model, components)
    bar = StepBar(len(my_batches(state, num_images, s.batch_size)), enabled=state.is_main_process)
    provider = components.registry.resolve("sampler", s.sampler.name)

    def draw(rows: range) -> np.ndarray:
        noise = ImageNoise(seed, rows, device)
        x_T = noise(torch.empty(len(rows), data.channels, data.image_size, data.image_size, device=device))
        countdown = Countdown()

        def steps(step: dict[str, Any]) -> None:
            countdown.see(step)
            bar(countdown)
            if callback is not None and rows.start == 0:
                callback(step)

        with autocast_for(device, s.mixed_precision), plugin_code(provider, "failed while sampling"):
            net = guided(model, None if labels is None else labels[rows.start:rows.stop], s.guidance_scale)
            x = components.sampler(components.diffusion, net, x_T, callback=steps, noise=noise)
        if not isinstance(x, torch.Tensor) or x.shape != x_T.shape:
            got = f"a tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise PluginError(f"{provider.label} returned {got}, not a tensor shaped like x_T {tuple(x_T.shape)}")
        return to_uint8(x).cpu().numpy()

    try:
        images = map_batches(state, num_images, s.batch_size, draw)
    finally:
        bar.close()
    if bar.problem and state.is_main_process:
        click.echo(f"warning: sampler '{provider.name}' breaks the callback contract: {bar.problem} (the i of "
                   "ddpm_kit.api.Sampler counts the steps left, down to 0); progress and the progressive grid "
                   "counted its reports instead", err=True)
    return torch.from_numpy(images)


class ProgressiveChain:
    """x0-hat along the reverse chain of the first ``images`` images at ``columns`` evenly spaced
    steps (paper Fig. 6), as a ``sample_images`` callback. The steps are chosen from the first
    report's countdown; from a sampler that breaks the contract, among the reports it made
    (thinned as they come, so memory stays bounded)."""

    def __init__(self, images: int = 8, columns: int = 10) -> None:
        self.images, self.columns = images, columns
        self.countdown, self.calls, self.keep = Countdown(), 0, set()
        self.snapshots: dict[int, torch.Tensor] = {}  # report number -> x0-hat

    def __call__(self, step: dict[str, Any]) -> None:
        self.countdown.see(step)
        n, self.calls = self.calls, self.calls + 1
        image = step.get("x0_hat", step.get("x")) if isinstance(step, dict) else None
        if not isinstance(image, torch.Tensor):
            return
        if self.countdown.kept:
            first = self.countdown.total - 1
            self.keep = self.keep or {first - int(round(v)) for v in np.linspace(first, 0, self.columns)}
            if n not in self.keep:
                return
        self.snapshots[n] = to_uint8(image[:self.images]).cpu()
        if len(self.snapshots) > 4 * self.columns:  # unknown length: keep every other report
            for drop in sorted(self.snapshots)[1:-1:2]:
                del self.snapshots[drop]

    def grid_rows(self) -> torch.Tensor | None:
        """uint8 [images, steps, C, H, W]: one row per image, from noise to the sample; None when
        the sampler reported no step."""
        if not self.snapshots:
            return None
        kept = sorted(self.snapshots)
        picks = sorted({kept[int(round(v))] for v in np.linspace(0, len(kept) - 1, min(self.columns, len(kept)))})
        return torch.stack([self.snapshots[n] for n in picks], dim=1)


def sample_run(components: Components, run: RunFolder, num_images: int, device: torch.device, *,
               name: str = "final", seed: int | None = None, use_ema: bool = True, state=LocalState()) -> None:
    """The sampling stage: ``num_images`` samples of the run's final weights by every process, written
    by the main process to samples/<name>.png/.npz with the progressive grid samples/<name>_progressive.png."""
    model = load_run_model(components, run, use_ema=use_ema, device=device)
    started, chain = time.time(), ProgressiveChain()
    images = sample_images(components, model, num_images, device, seed=seed, callback=chain, state=state)
    if not state.is_main_process:
        return
    grid, array = run.save_samples(images, name, sample_labels(components, num_images), drawn_by(components, use_ema))
    rows, written = chain.grid_rows(), [grid, array]
    if rows is not None:
        written.append(save_grid(rows.flatten(0, 1), run.progressive_file(name), cols=rows.shape[1]))
    click.echo(f"sampled {num_images} images in {time.time() - started:.0f} s -> {', '.join(map(str, written))}"
               + ("" if rows is not None else " (no progressive grid: the sampler reported no steps)"))
    run.add_to_summary(sample_seconds=time.time() - started)
    run.set_in_summary(sample_processes=describe(state))
