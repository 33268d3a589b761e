"""Sampling from a model: batches split over processes, every image a function of (seed, index).

Image i starts from x_T drawn by its own generator (``ImageNoise``, seeded by (seed, i)) and the
sampler draws its step noise from the same generator, so image i is the same whatever the batch
size or the number of processes (up to the float kernels, which see the same batches for the
same ``sample.batch_size``: then the bytes are identical).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click
import numpy as np
import torch

from ..conditioning import class_rows, guided
from ..images import to_uint8
from ..noise import ImageNoise
from ..progress import progress_bar
from ..runs import RunFolder
from .checkpoints import load_run_model
from .components import Components
from .distributed import LocalState, describe, map_batches, my_batches
from .fast_paths import autocast_for, quiet_known_dynamo_warnings


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


class StepBar:
    """One tqdm bar over every reverse step of this process's batches (main process only)."""

    def __init__(self, num_batches: int, enabled: bool, desc: str = "sample") -> None:
        self.num_batches = num_batches
        self.bar = progress_bar(total=None, desc=desc, unit="step", enabled=enabled)

    def __call__(self, step: dict[str, Any]) -> None:
        if self.bar.total is None:  # the first step's index tells the sampler's number of steps
            self.bar.total = (step["i"] + 1) * self.num_batches
            self.bar.refresh()
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def sample_labels(components: Components, num_images: int) -> torch.Tensor | None:
    """The class of each sample of a conditional run: ``sample.classes`` (default: every class) in
    equal consecutive blocks, one grid row each; None for an unconditional run."""
    if components.num_classes is None:
        return None
    return class_rows(num_images, components.recipe.sample.classes or list(range(components.num_classes)))


@torch.inference_mode()
def sample_images(components: Components, model: torch.nn.Module, num_images: int, device: torch.device, *,
                  seed: int | None = None, callback: Callable[[dict[str, Any]], None] | None = None,
                  state=None) -> torch.Tensor:
    """``num_images`` samples as uint8 [N, C, H, W], on every process of ``state``.

    ``state`` (an accelerate ``PartialState``) splits the batches over its processes; None samples
    in this process alone. ``callback`` sees the steps of the batch that holds image 0. A
    conditional run draws image i of class ``sample_labels(...)[i]`` with ``sample.guidance_scale``.
    """
    s, d = components.recipe.sample, components.recipe.data
    labels = sample_labels(components, num_images)
    seed = s.seed if seed is None else seed
    state = state or LocalState()
    model = prepare_for_sampling(model, components)
    bar = StepBar(len(my_batches(state, num_images, s.batch_size)), enabled=state.is_main_process)

    def draw(rows: range) -> np.ndarray:
        noise = ImageNoise(seed, rows, device)
        x_T = noise(torch.empty(len(rows), d.channels, d.image_size, d.image_size, device=device))

        def steps(step: dict[str, Any]) -> None:
            bar(step)
            if callback is not None and rows.start == 0:
                callback(step)

        with autocast_for(device, s.mixed_precision):
            net = guided(model, None if labels is None else labels[rows.start:rows.stop], s.guidance_scale)
            x = components.sampler(components.diffusion, net, x_T, callback=steps, noise=noise)
        return to_uint8(x).cpu().numpy()

    try:
        images = map_batches(state, num_images, s.batch_size, draw)
    finally:
        bar.close()
    return torch.from_numpy(images)


class ProgressiveChain:
    """x0-hat along the reverse chain of the first ``images`` images at 10 evenly spaced steps
    (paper Fig. 6), as a ``sample_images`` callback."""

    def __init__(self, images: int = 8) -> None:
        self.images, self.keep, self.snapshots = images, set(), {}

    def __call__(self, step: dict[str, Any]) -> None:
        if not self.keep:  # the first step's index tells how many steps this sampler takes
            self.keep.update(int(round(v)) for v in np.linspace(step["i"], 0, 10))
        if step["i"] in self.keep and step["i"] not in self.snapshots:
            self.snapshots[step["i"]] = to_uint8(step["x0_hat"][:self.images]).cpu()

    def grid_rows(self) -> torch.Tensor:
        """uint8 [images, steps, C, H, W]: one row per image, from noise to the sample."""
        return torch.stack([self.snapshots[i] for i in sorted(self.snapshots, reverse=True)], dim=1)


def sample_run(components: Components, run: RunFolder, num_images: int, device: torch.device, *,
               name: str = "final", seed: int | None = None, use_ema: bool = True, state=None) -> None:
    """The sampling stage: ``num_images`` samples of the run's final weights by every process, written
    by the main process to samples/<name>.png/.npz with the progressive grid samples/<name>_progressive.png."""
    state = state or LocalState()
    model = load_run_model(components, run, use_ema=use_ema, device=device)
    started, chain = time.time(), ProgressiveChain()
    images = sample_images(components, model, num_images, device, seed=seed, callback=chain, state=state)
    if not state.is_main_process:
        return
    grid, array = run.save_samples(images, name, sample_labels(components, num_images))
    rows = chain.grid_rows()
    progressive = run.save_grid(rows.flatten(0, 1), run.samples / f"{name}_progressive.png", cols=rows.shape[1])
    click.echo(f"sampled {num_images} images in {time.time() - started:.0f} s -> {grid}, {array}, {progressive}")
    run.add_to_summary(sample_seconds=time.time() - started)
    run.set_in_summary(sample_processes=describe(state))
