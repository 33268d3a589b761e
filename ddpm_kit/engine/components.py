"""What a recipe names, built by walking ``recipe.COMPONENT_KEYS`` (as validation does): the
diffusion, objective and sampler, the backbone and the data; a factory's complaint names the recipe
file and the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..diffusion import GaussianDiffusion
from ..errors import DdpmKitError, prefixed
from ..interfaces import CannotSample, Objective, Sampler
from ..plugins import Registry
from ..recipe import COMPONENT_KEYS, Recipe
from .splits import RunData


@dataclass
class Components:
    """Everything a recipe names, built (the backbone and the data when asked for)."""

    recipe: Recipe
    diffusion: GaussianDiffusion
    objective: Objective
    sampler: Sampler
    registry: Registry
    source: str = "recipe"
    data: RunData = field(init=False)

    def __post_init__(self) -> None:
        self.data = RunData(self.recipe, self.registry, self.source)

    def build_backbone(self) -> torch.nn.Module:
        """The backbone, sized for the data and for the variance's output channels (its factory gets
        ``in_channels``, ``out_channels``, ``image_size``, and in a conditional run ``num_classes``)."""
        r = self.recipe
        context = {"in_channels": r.data.channels, "out_channels": self.diffusion.output_channels(r.data.channels),
                   "image_size": r.data.image_size}
        if self.num_classes is not None:
            if not self.registry.resolve("backbone", r.backbone.name).takes("num_classes"):
                raise DdpmKitError(f"{self.source}: conditioning: backbone '{r.backbone.name}' takes no class labels "
                                   "(its factory has no num_classes parameter); use unet2d, or drop [conditioning]")
            context["num_classes"] = self.num_classes
        with prefixed(f"{self.source}: backbone"):
            return self.registry.build("backbone", r.backbone.name, r.backbone.params, **context)

    @property
    def num_classes(self) -> int | None:
        """The number of classes of a class-conditional run (None: unconditional)."""
        c = self.recipe.conditioning
        return None if c is None else c.num_classes


def build_at(recipe: Recipe, registry: Registry, source: str, key: str, context: dict[str, Any] | None = None) -> Any:
    """Build the plugin that ``recipe`` names at ``key`` with the engine's ``context``; its
    complaint names ``source`` and the key."""
    component = recipe.component(key)
    try:
        return registry.build(COMPONENT_KEYS[key], component.name, component.params, **(context or {}))
    except DdpmKitError as exc:
        raise (CannotSample if isinstance(exc, CannotSample) else DdpmKitError)(f"{source}: {key}: {exc}") from None


def build_components(recipe: Recipe, registry: Registry, source: str = "recipe",
                     run_dir: Path | None = None) -> Components:
    """Build the diffusion, objective and sampler; a factory's complaint names ``source`` and the key,
    and a sampler that cannot sample the diffusion is refused with those that can.
    ``run_dir``: the finished run being sampled or evaluated (None while a run is set up)."""
    diffusion = GaussianDiffusion(*(build_at(recipe, registry, source, f"diffusion.{part}")
                                    for part in ("schedule", "parameterization", "variance", "decoder")))
    objective = build_at(recipe, registry, source, "objective")
    with prefixed(f"{source}: objective"):
        objective.validate_diffusion(diffusion)
    context = {"num_timesteps": diffusion.num_timesteps, "diffusion": diffusion, "run_dir": run_dir,
               "registry": registry}
    try:
        sampler = build_at(recipe, registry, source, "sample.sampler", context)
    except CannotSample as exc:
        able = ", ".join(registry.buildable("sampler", **context)) or "(none installed)"
        raise CannotSample(f"{exc}; samplers that can: {able}") from None
    return Components(recipe, diffusion, objective, sampler, registry, source=source)
