"""Training data as the engine sees it: prepared splits and the global batch of each step.

One global batch per optimizer step is drawn from a generator seeded by (seed, step, micro-step)
and each process takes its slice, so P processes with batch B/P train exactly like one process
with batch B, and a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import torch

from ..conditioning import drop_labels
from ..data import to_model_range
from ..errors import DdpmKitError
from ..store import EncodedSplit, PixelStore, prepared_split, store_root
from .components import Components
from .distributed import process_state

Rows = PixelStore | EncodedSplit


def load_split(components: Components, split: str) -> Rows:
    """A dataset split as uint8 [N, C, H, W] rows: decoded once into the data store (by the first
    process of each machine; the others wait and read it), or kept encoded (``data.store``)."""
    if split not in components._pixels:
        r = components.recipe.data
        dataset = components.build_dataset()
        if split not in dataset:
            raise DdpmKitError(f"dataset '{r.dataset.name}' has no '{split}' split; splits: {', '.join(dataset)}")
        if r.store == "encoded":
            components._pixels[split] = EncodedSplit(dataset[split], r.image_size, r.channels, r.resize)
            return components._pixels[split]
        state = process_state()
        with state.local_main_process_first():
            components._pixels[split] = prepared_split(
                dataset[split], r.dataset.model_dump(mode="json"), split, r.image_size, r.channels, r.resize,
                root=store_root(r.store_dir), workers=r.workers, progress=state.is_local_main_process)
    return components._pixels[split]


def read_label_column(components: Components, split: str, column: str) -> torch.Tensor:
    """A split's integer column (class labels) as int64 [N]; a missing or non-integer column is a
    one-line error naming the dataset (callers prefix the recipe key)."""
    dataset = components.build_dataset()[split]
    name = components.recipe.data.dataset.name
    if column not in dataset.column_names:
        raise DdpmKitError(f"dataset '{name}' has no column '{column}'; columns: {', '.join(dataset.column_names)}")
    try:
        return torch.tensor(dataset[column], dtype=torch.long)
    except (TypeError, ValueError, RuntimeError):
        raise DdpmKitError(f"column '{column}' of dataset '{name}' does not hold integer class labels") from None


def load_labels(components: Components, split: str) -> torch.Tensor | None:
    """A conditional run's class labels of a split (int64 [N], held in memory), checked against
    ``conditioning.num_classes``; None for an unconditional run."""
    c = components.recipe.conditioning
    if c is None:
        return None
    if split not in components._labels:
        try:
            labels = read_label_column(components, split, c.label)
        except DdpmKitError as exc:
            raise DdpmKitError(f"{components.source}: conditioning.label: {exc}") from None
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= c.num_classes):
            raise DdpmKitError(f"{components.source}: conditioning.num_classes: the '{split}' split's labels run "
                               f"{int(labels.min())}..{int(labels.max())}, outside 0..{c.num_classes - 1}")
        components._labels[split] = labels
    return components._labels[split]


def step_generator(seed: int, step: int, micro: int = 0) -> torch.Generator:
    """The generator of one (micro-)step's global batch: indices, flips, timesteps and noise."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 64 + micro)


def draw_indices(total: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """The rows of one global batch: ``generator``'s first draw (with replacement across epochs)."""
    return torch.randint(0, total, (batch_size,), generator=generator)


def global_batch(pixels, batch_size: int, generator: torch.Generator, flip: bool, labels: torch.Tensor | None = None,
                 label_dropout: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x0 in [-1, 1] for one global batch (sampled with replacement across epochs), and its class
    labels (None without ``labels``), each dropped to NULL_LABEL with ``label_dropout``."""
    index = draw_indices(len(pixels), batch_size, generator)
    x0 = to_model_range(pixels[index])
    if flip:
        mask = torch.rand(batch_size, generator=generator) < 0.5
        x0 = torch.where(mask.view(-1, 1, 1, 1), x0.flip(-1), x0)
    if labels is None:
        return x0, None
    return x0, drop_labels(labels[index], label_dropout, generator)


# -- batches decoded ahead, in DataLoader workers (data.store = "encoded") -------------------------
class PrefetchedRows:
    """The rows of one micro-batch, decoded ahead: answers ``global_batch``'s one index draw."""

    def __init__(self, index: torch.Tensor, rows: torch.Tensor, total: int) -> None:
        self.index, self.rows, self.total = index, rows, total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        if not torch.equal(index, self.index):
            raise RuntimeError("prefetched rows asked for another batch than the one drawn for this step")
        return self.rows


class StepRows(torch.utils.data.Dataset):
    """Item k: this process's rows of every micro-batch of step ``first + k``, the indices drawn
    exactly as ``global_batch`` draws them (other processes' rows are left zero)."""

    def __init__(self, split: Rows, seed: int, first: int, steps: int, micro_batch: int, grad_accum: int,
                 mine: slice) -> None:
        self.split, self.seed, self.first, self.steps = split, seed, first, steps
        self.micro_batch, self.grad_accum, self.mine = micro_batch, grad_accum, mine

    def __len__(self) -> int:
        return self.steps - self.first

    def __getitem__(self, k: int) -> list[PrefetchedRows]:
        out = []
        for micro in range(self.grad_accum):
            index = draw_indices(len(self.split), self.micro_batch, step_generator(self.seed, self.first + k, micro))
            rows = torch.zeros((self.micro_batch, *self.split.shape[1:]), dtype=torch.uint8)
            rows[self.mine] = self.split[index[self.mine]]
            out.append(PrefetchedRows(index, rows, len(self.split)))
        return out


def _as_is(item):
    return item


def step_rows(split: Rows, seed: int, first: int, steps: int, micro_batch: int, grad_accum: int, mine: slice,
              workers: int | None) -> Iterator[list]:
    """Per training step, one row source per micro-step: the store itself, or (encoded data) the
    rows that DataLoader workers decoded ahead of time."""
    if not isinstance(split, EncodedSplit):
        return itertools.repeat([split] * grad_accum)
    workers = workers or min(4, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(StepRows(split, seed, first, steps, micro_batch, grad_accum, mine),
                                         batch_size=None, collate_fn=_as_is, num_workers=workers,
                                         prefetch_factor=4, persistent_workers=False)
    return iter(loader)
