"""The recipe's dataset as the engine reads it: each split as uint8 rows (decoded once into the data
store by the first process of each machine, or kept encoded: docs/training.md), and a conditional
run's labels; the plugin is built and each split and label column read once per ``RunData``."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import torch

from ..errors import DdpmKitError, prefixed
from ..plugins import Registry
from ..plugins.registry import Validated
from ..recipe import Recipe
from ..store import EncodedSplit, PixelStore, prepared_split, store_root
from .distributed import process_state

Rows = PixelStore | EncodedSplit


class RunData:
    """The dataset a recipe names: the plugin's check, its splits as rows, its class labels.
    Errors name ``source`` (the recipe file) and the recipe key."""

    def __init__(self, recipe: Recipe, registry: Registry, source: str = "recipe") -> None:
        self.recipe, self.registry, self.source = recipe, registry, source
        self._rows: dict[str, Rows] = {}
        self._labels: dict[str, torch.Tensor] = {}

    @cached_property
    def validated(self) -> Validated:
        """The dataset's parameters, through its plugin's declared cheap check (a folder that exists,
        say) once; nothing is loaded."""
        dataset = self.recipe.data.dataset
        with prefixed(f"{self.source}: data.dataset"):
            return self.registry.validate("dataset", dataset.name, dataset.params)

    def validate(self) -> None:
        self.validated  # noqa: B018 (computed once)

    @cached_property
    def dataset(self) -> Any:
        """The dataset plugin's DatasetDict."""
        validated = self.validated
        with prefixed(f"{self.source}: data.dataset"):
            return validated.build()

    def split(self, name: str) -> Any:
        """One split of the dataset (a ``datasets.Dataset``)."""
        if name not in self.dataset:
            raise DdpmKitError(f"dataset '{self.recipe.data.dataset.name}' has no '{name}' split; splits: "
                               f"{', '.join(self.dataset)}")
        return self.dataset[name]

    def rows(self, split: str) -> Rows:
        """A split as uint8 [N, C, H, W] rows: from the data store, or decoded as read (``data.store``)."""
        if split not in self._rows:
            r = self.recipe.data
            if r.store == "encoded":
                self._rows[split] = EncodedSplit(self.split(split), r.image_size, r.channels, r.resize)
            else:
                state = process_state()
                with state.local_main_process_first():
                    self._rows[split] = prepared_split(
                        self.split(split), r.dataset.model_dump(mode="json"), split, r.image_size, r.channels,
                        r.resize, root=store_root(r.store_dir), workers=r.workers,
                        progress=state.is_local_main_process)
        return self._rows[split]

    def label_column(self, split: str, column: str) -> torch.Tensor:
        """A split's integer column (class labels) as int64 [N]; a missing or non-integer column is a
        one-line error naming the dataset (callers prefix the recipe key)."""
        dataset, name = self.split(split), self.recipe.data.dataset.name
        if column not in dataset.column_names:
            raise DdpmKitError(f"dataset '{name}' has no column '{column}'; columns: {', '.join(dataset.column_names)}")
        try:
            return torch.tensor(dataset[column], dtype=torch.long)
        except (TypeError, ValueError, RuntimeError):
            raise DdpmKitError(f"column '{column}' of dataset '{name}' does not hold integer class labels") from None

    def labels(self, split: str) -> torch.Tensor | None:
        """A conditional run's class labels of a split (int64 [N], held in memory), checked against
        ``conditioning.num_classes``; None for an unconditional run."""
        c = self.recipe.conditioning
        if c is None:
            return None
        if split not in self._labels:
            with prefixed(f"{self.source}: conditioning.label"):
                labels = self.label_column(split, c.label)
            if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= c.num_classes):
                raise DdpmKitError(f"{self.source}: conditioning.num_classes: the '{split}' split's labels run "
                                   f"{int(labels.min())}..{int(labels.max())}, outside 0..{c.num_classes - 1}")
            self._labels[split] = labels
        return self._labels[split]
