"""What a recipe names, built: the diffusion, objective, sampler, backbone and dataset."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from ..diffusion import GaussianDiffusion
from ..errors import DdpmKitError
from ..interfaces import Objective, Sampler
from ..plugins import Registry
from ..recipe import BACKBONE_CONTEXT, Recipe


@dataclass
class Components:
    """Everything a recipe names, built."""

    recipe: Recipe
    diffusion: GaussianDiffusion
    objective: Objective
    sampler: Sampler
    registry: Registry
    source: str = "recipe"
    _dataset: Any = None
    _pixels: dict[str, Any] = field(default_factory=dict)
    _labels: dict[str, torch.Tensor] = field(default_factory=dict)  # a conditional run's, per split

    def build_backbone(self) -> torch.nn.Module:
        """The backbone, sized for the data and for the variance's output channels."""
        r = self.recipe
        context = {"in_channels": r.data.channels, "out_channels": self.diffusion.output_channels(r.data.channels),
                   "image_size": r.data.image_size}
        if self.num_classes is not None:  # passed only to conditional runs: older factories never see it
            context["num_classes"] = self.num_classes
            factory = self.registry.resolve("backbone", r.backbone.name).factory
            if "num_classes" not in inspect.signature(factory).parameters:
                raise DdpmKitError(f"{self.source}: conditioning: backbone '{r.backbone.name}' takes no class "
                                   "labels (its factory has no num_classes parameter); use unet2d, or drop "
                                   "[conditioning]")
        params = dict(r.backbone.params)
        for key in BACKBONE_CONTEXT:
            if key in params and params.pop(key) != context.get(key):
                raise DdpmKitError(
                    f"{self.source}: backbone.{key} = {r.backbone.params[key]!r} but the recipe needs "
                    f"{context.get(key)} (data.channels={r.data.channels}, variance '{self.diffusion.variance.name}', "
                    "conditioning.num_classes); "
                    "remove the key to size the backbone automatically")
        try:
            return self.registry.build("backbone", r.backbone.name, params, **context)
        except DdpmKitError as exc:
            raise DdpmKitError(f"{self.source}: backbone: {exc}") from None

    @property
    def num_classes(self) -> int | None:
        """The number of classes of a class-conditional run (None: unconditional)."""
        c = self.recipe.conditioning
        return None if c is None else c.num_classes

    def check_dataset(self) -> None:
        """The dataset plugin's own cheap check (``factory.check(**params)``: a folder that exists,
        say), if it has one; nothing is loaded."""
        r = self.recipe.data
        check = getattr(self.registry.resolve("dataset", r.dataset.name).factory, "check", None)
        if check is not None:
            try:
                check(**r.dataset.params)
            except DdpmKitError as exc:
                raise DdpmKitError(f"{self.source}: data.dataset: {exc}") from None

    def build_dataset(self):
        """The dataset plugin's DatasetDict (built once per Components)."""
        if self._dataset is None:
            r = self.recipe.data
            try:
                self._dataset = self.registry.build("dataset", r.dataset.name, r.dataset.params)
            except DdpmKitError as exc:
                raise DdpmKitError(f"{self.source}: data.dataset: {exc}") from None
        return self._dataset


def build_components(recipe: Recipe, registry: Registry, source: str = "recipe") -> Components:
    """Build the diffusion, objective and sampler; a factory's complaint names ``source`` and the key."""
    def build(key: str, kind: str, component, **context: Any) -> Any:
        try:
            return registry.build(kind, component.name, component.params, **context)
        except DdpmKitError as exc:
            raise DdpmKitError(f"{source}: {key}: {exc}") from None

    d = recipe.diffusion
    diffusion = GaussianDiffusion(
        build("diffusion.schedule", "schedule", d.schedule),
        build("diffusion.parameterization", "parameterization", d.parameterization),
        build("diffusion.variance", "variance", d.variance),
        build("diffusion.decoder", "decoder", d.decoder),
    )
    objective = build("objective", "objective", recipe.objective)
    try:
        objective.check(diffusion)
    except DdpmKitError as exc:
        raise DdpmKitError(f"{source}: objective: {exc}") from None
    sampler = build("sample.sampler", "sampler", recipe.sample.sampler, num_timesteps=diffusion.num_timesteps)
    check = getattr(sampler, "check", None)  # a sampler that cannot sample this diffusion says so now
    if check is not None:
        try:
            check(diffusion)
        except DdpmKitError as exc:
            raise DdpmKitError(f"{source}: sample.sampler: {exc}") from None
    return Components(recipe, diffusion, objective, sampler, registry, source=source)
