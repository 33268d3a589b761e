"""Noise that belongs to an image, not to a batch (``ImageNoise``, seeded by (seed, image index):
docs/training.md); samplers draw through ``randn_like`` (docs/writing-a-plugin.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .seeds import image_seed

NoiseSource = Callable[[torch.Tensor], torch.Tensor]
"""``noise(like) -> standard normal tensor of like's shape, dtype and device``."""


class ImageNoise:
    """Standard normal draws whose row r comes from the generator of image ``indices[r]``.

    Each call draws once from every image's generator, so the k-th call gives image i the same
    values whatever the batch it is in.
    """

    def __init__(self, seed: int, indices: Sequence[int], device: torch.device | str = "cpu") -> None:
        self.generators = [torch.Generator(device=device).manual_seed(image_seed(seed, i)) for i in indices]

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        if like.shape[0] != len(self.generators):
            raise ValueError(f"ImageNoise holds {len(self.generators)} images, asked for a batch of {like.shape[0]}")
        return torch.stack([torch.randn(like.shape[1:], generator=g, device=like.device, dtype=like.dtype)
                            for g in self.generators])


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None,
               noise: NoiseSource | None = None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``: from ``noise`` when given, else from ``generator``."""
    if noise is not None:
        return noise(x)
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
