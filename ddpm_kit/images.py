"""Turn dataset images into uint8 arrays [N, C, H, W] and batches in [-1, 1].

Data stay on the 8-bit grid (x / 127.5 - 1), so the discretized decoder's bits/dim are exact.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from .errors import DdpmKitError

if TYPE_CHECKING:
    import datasets


def image_column(ds: datasets.Dataset) -> str:
    """The first column with the ``Image`` feature (or one named image/img)."""
    import datasets

    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            return name
    for name in ("image", "img"):
        if name in ds.column_names:
            return name
    raise DdpmKitError(f"dataset has no image column; columns: {', '.join(ds.column_names)}")


def prepare_image(image: Image.Image, image_size: int, channels: int, resize: str) -> np.ndarray:
    """One PIL image -> uint8 array [C, image_size, image_size]."""
    image = image.convert("L" if channels == 1 else "RGB")
    w, h = image.size
    if (w, h) != (image_size, image_size):
        if resize == "pad" and w <= image_size and h <= image_size:
            canvas = Image.new(image.mode, (image_size, image_size))
            canvas.paste(image, ((image_size - w) // 2, (image_size - h) // 2))
            image = canvas
        else:
            if resize == "center_crop":
                side = min(w, h)
                image = image.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
            image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def decode_images(items, image_size: int, channels: int, resize: str) -> np.ndarray:
    """Undecoded ``datasets.Image`` values ({'path', 'bytes'}) or PIL images -> uint8 [N, C, H, W].
    An unreadable image is an error naming it."""
    arrays = []
    for item in items:
        try:
            image = item
            if not isinstance(item, Image.Image):
                image = Image.open(io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"])
                image.load()  # decode now, so a truncated file fails here, named
        except (OSError, ValueError, SyntaxError) as exc:
            where = item.get("path") if isinstance(item, dict) else None
            raise DdpmKitError(f"{where or 'an image in the dataset'}: cannot read image ({exc})") from None
        arrays.append(prepare_image(image, image_size, channels, resize))
    return np.stack(arrays)


def undecoded(ds: datasets.Dataset) -> tuple[datasets.Dataset, str]:
    """The split with its image column left encoded (decoded by ``decode_images``), and that column."""
    import datasets

    if len(ds) == 0:
        raise DdpmKitError("dataset split is empty")
    column = image_column(ds)
    if isinstance(ds.features.get(column), datasets.Image):
        ds = ds.cast_column(column, datasets.Image(decode=False))
    return ds, column


def to_uint8_tensor(ds: datasets.Dataset, image_size: int, channels: int, resize: str) -> torch.Tensor:
    """A whole split as uint8 [N, C, H, W], held in memory (the engine uses ``store.prepared_split``)."""
    ds, column = undecoded(ds)
    return torch.from_numpy(decode_images(ds[column], image_size, channels, resize))


def to_model_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float in [-1, 1]."""
    return pixels.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 0..255 (rounded to the 8-bit grid)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def block_width(labels: torch.Tensor | None) -> int | None:
    """The length of the equal blocks of consecutive equal labels (one grid row per class), if any."""
    if labels is None or len(labels) == 0:
        return None
    _, counts = torch.unique_consecutive(labels, return_counts=True)
    return int(counts[0]) if bool((counts == counts[0]).all()) and len(counts) > 1 else None


def save_grid(images: torch.Tensor, path: Path, cols: int | None = None, min_width: int = 320) -> Path:
    """uint8 [N, C, H, W] -> one PNG grid (diffusers' make_image_grid), ``cols`` wide (default:
    square), upscaled by a whole factor to at least ``min_width`` pixels."""
    from diffusers.utils import make_image_grid

    arrays = images.permute(0, 2, 3, 1).numpy()
    mode = "L" if arrays.shape[-1] == 1 else "RGB"
    pil = [Image.fromarray(a[..., 0] if mode == "L" else a, mode) for a in arrays]
    cols = cols or math.ceil(math.sqrt(len(pil)))
    rows = math.ceil(len(pil) / cols)
    pil += [Image.new(mode, pil[0].size)] * (rows * cols - len(pil))
    grid = make_image_grid(pil, rows=rows, cols=cols)
    scale = max(1, -(-min_width // (cols * pil[0].size[0])))
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
