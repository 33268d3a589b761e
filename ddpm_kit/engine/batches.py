"""The global batch of each training (micro-)step, drawn from the generator of (seed, step,
micro-step) with each process taking its slice (docs/training.md, "Batches"), and batches decoded
ahead for encoded data."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..conditioning import drop_labels
from ..images import to_model_range
from ..seeds import step_generator
from ..store import EncodedSplit
from .splits import Rows


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


@dataclass
class MicroBatch:
    """What one training micro-step computes on: data in [-1, 1], class labels (None when
    unconditional), timesteps, their importance weights and the forward process's noise."""

    x0: torch.Tensor
    labels: torch.Tensor | None
    t: torch.Tensor
    weights: torch.Tensor
    noise: torch.Tensor

    def rows(self, mine: slice, device: torch.device) -> MicroBatch:
        """This process's rows of the global batch, on ``device``."""
        def take(v: torch.Tensor | None) -> torch.Tensor | None:
            return None if v is None else v[mine].to(device)

        return MicroBatch(take(self.x0), take(self.labels), take(self.t), take(self.weights), take(self.noise))


def draw_global_batch(rows, size: int, generator: torch.Generator, flip: bool, labels: torch.Tensor | None,
                      label_dropout: float, objective, diffusion) -> MicroBatch:
    """The global micro-batch of ``size`` rows, everything drawn from ``generator`` in one fixed
    order: row indices, flips, dropped labels (``global_batch``), timesteps, then noise."""
    x0, y = global_batch(rows, size, generator, flip, labels, label_dropout)
    t, weights = objective.sample_t(diffusion, size, torch.device("cpu"), generator)
    return MicroBatch(x0, y, t, weights, torch.randn(x0.shape, generator=generator))


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
