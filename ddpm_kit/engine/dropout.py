"""Dropout whose masks belong to the global batch, not to the process (``torch.nn.Dropout`` draws
from each process's own RNG): ``GlobalBatchDropout`` draws the whole global batch's mask from a
generator seeded by (micro-step seed, call number) (``seeds.dropout_seed``) and keeps this process's
rows, so P processes and a resumed run drop what one uninterrupted process drops (docs/training.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..seeds import dropout_seed


@dataclass
class MaskSource:
    """Where the masks of the current micro-step come from; the engine sets it before each forward
    (``seed``: the micro-step's ``seeds.step_seed``)."""

    seed: int = 0
    global_rows: int = 0
    rows: slice = field(default_factory=lambda: slice(None))
    calls: int = 0

    def start(self, seed: int, global_rows: int, rows: slice) -> None:
        self.seed, self.global_rows, self.rows, self.calls = seed, global_rows, rows, 0

    def keep_mask(self, like: torch.Tensor, p: float) -> torch.Tensor:
        """This process's rows of the global batch's keep-mask for the next dropout call."""
        self.calls += 1
        g = torch.Generator(device=like.device).manual_seed(dropout_seed(self.seed, self.calls))
        u = torch.rand((self.global_rows, *like.shape[1:]), generator=g, device=like.device)
        return u[self.rows] >= p


class GlobalBatchDropout(torch.nn.Module):
    """A drop-in for ``torch.nn.Dropout`` (inverted dropout, identity in eval mode)."""

    def __init__(self, p: float, source: MaskSource) -> None:
        super().__init__()
        self.p, self.source = p, source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * self.source.keep_mask(x, self.p).to(x.dtype) / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_global_batch_dropout(model: torch.nn.Module) -> MaskSource | None:
    """Swap every ``torch.nn.Dropout`` in ``model`` for ``GlobalBatchDropout``; None if it has none."""
    source = MaskSource()
    swapped = False
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Dropout and child.p > 0:
                setattr(parent, name, GlobalBatchDropout(child.p, source))
                swapped = True
    return source if swapped else None
