"""The prepared-data store: each split decoded once, on disk, read row by row.

A split is decoded once, by parallel worker processes, into ``<store>/<fingerprint>/pixels.u8``
(uint8 [N, C, H, W], C order) with a ``meta.json`` written last; a batch reads only its rows
(``os.pread``), so resident memory does not grow with the dataset. docs/training.md describes
the layout, what the fingerprint covers and where the store lives.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache import cache_root, content_hash
from .images import decode_images, undecoded
from .progress import progress_bar

STORE_FORMAT = 1
META = "meta.json"
PIXELS = "pixels.u8"


def store_root(configured: str | None = None) -> Path:
    """The folder that holds prepared splits: ``data.store_dir``, else ``$DDPM_KIT_DATA_STORE``, else
    ``<cache>/data-store``."""
    chosen = configured or os.environ.get("DDPM_KIT_DATA_STORE")
    return Path(chosen).expanduser() if chosen else cache_root() / "data-store"


def fingerprint(source: dict[str, Any], split_fingerprint: str, split: str, image_size: int, channels: int,
                resize: str) -> str:
    """What identifies a prepared split; equal fingerprints mean equal pixels."""
    key = {"format": STORE_FORMAT, "source": source, "split": split, "split_fingerprint": split_fingerprint,
           "image_size": image_size, "channels": channels, "resize": resize}
    return content_hash(key, length=20)


def _row_indices(index, rows: int) -> np.ndarray:
    """Row indices (a tensor, array, list or int) as a flat int64 array, checked to lie in 0..rows-1."""
    wanted = np.asarray(index, dtype=np.int64).reshape(-1)
    if len(wanted) and (wanted.min() < 0 or wanted.max() >= rows):
        raise IndexError(f"row index out of range for a split of {rows} images")
    return wanted


class PixelStore:
    """A prepared split: ``len``, ``shape``, and rows by index (tensor, array or slice) as uint8."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        meta = json.loads((self.folder / META).read_text())
        self.shape: tuple[int, ...] = tuple(meta["shape"])
        self.row_bytes = int(np.prod(self.shape[1:]))
        self._fd: int | None = None
        self._pid = -1

    def __len__(self) -> int:
        return self.shape[0]

    def _file(self) -> int:
        if self._pid != os.getpid():  # a forked worker opens its own descriptor
            self._fd, self._pid = os.open(self.folder / PIXELS, os.O_RDONLY), os.getpid()
        return self._fd

    def _read(self, start: int, count: int) -> np.ndarray:
        data = os.pread(self._file(), count * self.row_bytes, start * self.row_bytes)
        return np.frombuffer(data, dtype=np.uint8).reshape(count, *self.shape[1:])

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            rows = self._read(start, max(0, stop - start))[::step]
        else:
            wanted = _row_indices(index, len(self))
            rows = np.stack([self._read(int(i), 1)[0] for i in wanted]) if len(wanted) else \
                np.empty((0, *self.shape[1:]), np.uint8)
        return torch.from_numpy(np.array(rows))  # a writable copy

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_pid": -1}


# -- building a store ----------------------------------------------------------------------------
_worker: dict[str, Any] = {}


def _init_worker(ds, column: str, settings: tuple[int, int, str], target: str, row_bytes: int) -> None:
    _worker.update(ds=ds, column=column, settings=settings, fd=os.open(target, os.O_WRONLY), row_bytes=row_bytes)


def _decode_range(bounds: tuple[int, int]) -> int:
    """Decode rows start..stop-1 and write them in place (pwrite: no mapped pages stay resident)."""
    start, stop = bounds
    items = _worker["ds"][start:stop][_worker["column"]]
    pixels = np.ascontiguousarray(decode_images(items, *_worker["settings"]))
    os.pwrite(_worker["fd"], pixels.tobytes(), start * _worker["row_bytes"])
    return stop - start


def build_store(ds, folder: Path, image_size: int, channels: int, resize: str, *, workers: int | None = None,
                chunk: int = 256, progress: bool = True, desc: str = "preparing data") -> PixelStore:
    """Decode ``ds`` into ``folder`` (written under a temporary name, renamed when complete)."""
    ds, column = undecoded(ds)
    shape = (len(ds), channels, image_size, image_size)
    tmp = folder.with_name(f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        row_bytes = channels * image_size * image_size
        with open(tmp / PIXELS, "wb") as f:
            f.truncate(len(ds) * row_bytes)
        workers = workers or min(8, os.cpu_count() or 1)
        bounds = [(start, min(start + chunk, len(ds))) for start in range(0, len(ds), chunk)]
        args = (ds, column, (image_size, channels, resize), str(tmp / PIXELS), row_bytes)
        bar = progress_bar(total=len(ds), desc=desc, unit="img", enabled=progress)
        if workers > 1 and len(bounds) > 1:
            context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
            with context.Pool(min(workers, len(bounds)), initializer=_init_worker, initargs=args) as pool:
                for done in pool.imap_unordered(_decode_range, bounds):
                    bar.update(done)
        else:
            _init_worker(*args)
            try:
                for b in bounds:
                    bar.update(_decode_range(b))
            finally:
                os.close(_worker.pop("fd"))
                _worker.clear()
        bar.close()
        (tmp / META).write_text(json.dumps({"shape": list(shape), "format": STORE_FORMAT}))
        try:
            tmp.rename(folder)
        except OSError:  # another process finished the same store first
            if not (folder / META).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PixelStore(folder)


def prepared_split(ds, source: dict[str, Any], split: str, image_size: int, channels: int, resize: str, *,
                   root: Path, workers: int | None = None, progress: bool = True) -> PixelStore:
    """The split's store, built now if no complete one exists."""
    split_key = getattr(ds, "_fingerprint", None) or uuid.uuid4().hex  # no fingerprint: never reused
    folder = root / fingerprint(source, split_key, split, image_size, channels, resize)
    if (folder / META).is_file():
        problem = store_problem(folder)
        if problem is None:
            return PixelStore(folder)
        set_aside_damaged(folder, problem)
    folder.parent.mkdir(parents=True, exist_ok=True)
    return build_store(ds, folder, image_size, channels, resize, workers=workers, progress=progress,
                       desc=f"preparing the {split} split in {folder}")


def store_problem(folder: Path) -> str | None:
    """What is wrong with a complete-looking store (meta.json unreadable, pixels.u8 of another
    size than meta.json's shape), or None. Bytes changed inside pixels.u8 are not detected: that
    would mean hashing the whole store at every start."""
    try:
        meta = json.loads((folder / META).read_text())
        shape = [int(n) for n in meta["shape"]]
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        return f"{META} unreadable ({type(exc).__name__})"
    if meta.get("format") != STORE_FORMAT or len(shape) != 4:
        return f"{META} describes another store format"
    pixels = folder / PIXELS
    size = pixels.stat().st_size if pixels.is_file() else None
    if size != int(np.prod(shape)):
        return f"{PIXELS} holds {size} bytes, not the {int(np.prod(shape))} its {META} says"
    return None


def set_aside_damaged(folder: Path, problem: str) -> None:
    """Move a damaged store out of the way (renamed, so that processes racing to do the same do not
    remove a store another one has just rebuilt), say so, and delete it."""
    aside = folder.with_name(f".damaged-{folder.name}-{uuid.uuid4().hex[:8]}")
    try:
        if store_problem(folder) is not None:  # still damaged: not rebuilt by another process meanwhile
            folder.rename(aside)
    except OSError:  # another process moved it first
        return
    print(f"warning: data store {folder} was damaged ({problem}); rebuilding it", file=sys.stderr, flush=True)
    shutil.rmtree(aside, ignore_errors=True)


class EncodedSplit:
    """A split kept as the dataset's encoded images, decoded row by row when asked: for data whose
    decoded size would not fit on disk. Same interface as ``PixelStore``."""

    def __init__(self, ds, image_size: int, channels: int, resize: str) -> None:
        ds, self.column = undecoded(ds)
        self.ds, self.settings = ds, (image_size, channels, resize)
        self.shape = (len(ds), channels, image_size, image_size)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, slice):
            items = self.ds[index][self.column]
        else:
            wanted = _row_indices(index, len(self)).tolist()
            items = self.ds[wanted][self.column] if wanted else []
        if not items:
            return torch.empty((0, *self.shape[1:]), dtype=torch.uint8)
        return torch.from_numpy(decode_images(items, *self.settings))
