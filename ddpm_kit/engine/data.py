"""Training data as the engine sees it: prepared splits and the global batch of each step.

One global batch per optimizer step is drawn from a generator seeded by (seed, step, micro-step)
and each process takes its slice, so P processes with batch B/P train exactly like one process
with batch B, and a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import torch

from ..data import to_model_range
from ..errors import DdpmKitError
from ..store import PixelStore, prepared_split, store_root
from .components import Components
from .distributed import process_state


def load_split(components: Components, split: str) -> PixelStore:
    """A dataset split as a store of uint8 [N, C, H, W] rows, decoded once into the data store
    (by the first process of each machine; the others wait and read it)."""
    if split not in components._pixels:
        r = components.recipe.data
        dataset = components.build_dataset()
        if split not in dataset:
            raise DdpmKitError(f"dataset '{r.dataset.name}' has no '{split}' split; splits: {', '.join(dataset)}")
        state = process_state()
        with state.local_main_process_first():
            components._pixels[split] = prepared_split(
                dataset[split], r.dataset.model_dump(mode="json"), split, r.image_size, r.channels, r.resize,
                root=store_root(r.store_dir), workers=r.workers, progress=state.is_local_main_process)
    return components._pixels[split]


def step_generator(seed: int, step: int, micro: int = 0) -> torch.Generator:
    """The generator of one (micro-)step's global batch: indices, flips, timesteps and noise."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 64 + micro)


def global_batch(pixels, batch_size: int, generator: torch.Generator, flip: bool) -> torch.Tensor:
    """x0 in [-1, 1] for one global batch (sampled with replacement across epochs)."""
    index = torch.randint(0, len(pixels), (batch_size,), generator=generator)
    x0 = to_model_range(pixels[index])
    if flip:
        mask = torch.rand(batch_size, generator=generator) < 0.5
        x0 = torch.where(mask.view(-1, 1, 1, 1), x0.flip(-1), x0)
    return x0
