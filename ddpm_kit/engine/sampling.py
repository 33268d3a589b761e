"""Sampling from a model: batches split over processes, every image a function of (seed, index).

Image i starts from x_T drawn by its own generator (``ImageNoise``, seeded by (seed, i)) and the
sampler draws its step noise from the same generator, so image i is the same whatever the batch
size or the number of processes (up to the float kernels, which see the same batches for the
same ``sample.batch_size``: then the bytes are identical).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from ..conditioning import class_rows, guided
from ..data import to_uint8
from ..noise import ImageNoise, image_seed
from ..progress import progress_bar
from .components import Components
from .distributed import LocalState, map_batches, my_batches


def autocast_for(device: torch.device, mixed_precision: str):
    """torch.autocast for ``sample.mixed_precision`` ("no", "bf16", "fp16") on ``device``."""
    if mixed_precision == "no":
        return nullcontext()
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def quiet_known_dynamo_warnings() -> None:
    """Silence Dynamo's note on diffusers' lru_cache'd torch-version check in its up/downsampling
    blocks (raised on every compile, harmless: the cached value never changes within a process)."""
    import warnings

    warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`", category=UserWarning)


def accepts_noise(sampler: Callable) -> bool:
    """Whether a sampler takes ``noise`` (per-image noise); older plugins take only ``generator``."""
    try:
        parameters = inspect.signature(sampler).parameters
    except (TypeError, ValueError):
        return False
    return "noise" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


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
    per_image = accepts_noise(components.sampler)
    bar = StepBar(len(my_batches(state, num_images, s.batch_size)), enabled=state.is_main_process)

    def draw(rows: range) -> np.ndarray:
        noise = ImageNoise(seed, rows, device)
        x_T = noise(torch.empty(len(rows), d.channels, d.image_size, d.image_size, device=device))
        if per_image:
            kwargs: dict[str, Any] = {"noise": noise}
        else:  # a sampler without ``noise``: one generator per batch (images then depend on the batch)
            kwargs = {"generator": torch.Generator(device=device).manual_seed(image_seed(seed, rows.start))}

        def steps(step: dict[str, Any]) -> None:
            bar(step)
            if callback is not None and rows.start == 0:
                callback(step)

        with autocast_for(device, s.mixed_precision):
            net = guided(model, None if labels is None else labels[rows.start:rows.stop], s.guidance_scale)
            x = components.sampler(components.diffusion, net, x_T, callback=steps, **kwargs)
        return to_uint8(x).cpu().numpy()

    try:
        images = map_batches(state, num_images, s.batch_size, draw)
    finally:
        bar.close()
    return torch.from_numpy(images)
