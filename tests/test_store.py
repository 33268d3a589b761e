"""The prepared-data store: decoded once (in worker processes) to the same pixels as decoding in
memory, reused by later runs, read row by row, and bad images still named."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_kit import store
from ddpm_kit.images import to_uint8_tensor
from ddpm_kit.errors import DdpmKitError


@pytest.fixture
def folder_dataset(tmp_path, registry):
    """40 random RGB images of mixed sizes in a folder, through the imagefolder plugin."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        h, w = (12, 10) if i % 3 else (9, 9)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return registry.build("dataset", "imagefolder", {"path": str(folder), "test_fraction": 0.25})


SOURCE = {"name": "imagefolder"}


def test_store_holds_the_pixels_that_decoding_in_memory_gives(folder_dataset, tmp_path):
    expected = to_uint8_tensor(folder_dataset["train"], 8, 3, "center_crop")
    built = store.build_store(folder_dataset["train"], tmp_path / "s", 8, 3, "center_crop", workers=2, chunk=7,
                              progress=False)  # 5 chunks over 2 worker processes
    assert len(built) == 30 and built.shape == (30, 3, 8, 8)
    assert torch.equal(built[:], expected)
    index = torch.tensor([29, 0, 5, 5, 17])
    assert torch.equal(built[index], expected[index])
    assert torch.equal(built[3:9], expected[3:9])
    with pytest.raises(IndexError):
        built[torch.tensor([30])]
    assert json.loads((tmp_path / "s" / "meta.json").read_text())["shape"] == [30, 3, 8, 8]
    assert not list(tmp_path.glob(".tmp-*"))  # the temporary folder was renamed


def test_a_prepared_split_is_reused_and_keyed_by_its_settings(folder_dataset, tmp_path, monkeypatch):
    root = tmp_path / "root"
    first = store.prepared_split(folder_dataset["train"], SOURCE, "train", 8, 3, "resize", root=root, progress=False)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the store was built again")

    monkeypatch.setattr(store, "build_store", no_rebuild)
    again = store.prepared_split(folder_dataset["train"], SOURCE, "train", 8, 3, "resize", root=root, progress=False)
    assert again.folder == first.folder and torch.equal(again[:], first[:])
    with pytest.raises(AssertionError, match="built again"):  # other pixel settings: another store
        store.prepared_split(folder_dataset["train"], SOURCE, "train", 8, 1, "resize", root=root, progress=False)
    with pytest.raises(AssertionError, match="built again"):  # other data: another store
        store.prepared_split(folder_dataset["test"], SOURCE, "test", 8, 3, "resize", root=root, progress=False)


def test_store_root_follows_recipe_then_environment_then_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DDPM_KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DDPM_KIT_DATA_STORE", raising=False)
    assert store.store_root() == tmp_path / "cache" / "data-store"
    monkeypatch.setenv("DDPM_KIT_DATA_STORE", str(tmp_path / "env"))
    assert store.store_root() == tmp_path / "env"
    assert store.store_root(str(tmp_path / "recipe")) == tmp_path / "recipe"


def test_a_bad_image_is_named_when_workers_decode(tmp_path, registry):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(np.full((6, 6, 3), 20 * i, dtype=np.uint8)).save(folder / f"{i:02d}.png")
    (folder / "99.png").write_bytes((folder / "00.png").read_bytes()[:40])  # truncated
    d = registry.build("dataset", "imagefolder", {"path": str(folder), "test_fraction": 0.1})
    split = "train" if any("99.png" in (r["path"] or "") for r in d["train"].cast_column(
        "image", __import__("datasets").Image(decode=False))["image"]) else "test"
    with pytest.raises(DdpmKitError, match=r"99\.png: cannot read image"):
        store.build_store(d[split], tmp_path / "s", 8, 3, "resize", workers=2, chunk=3, progress=False)
    assert not (tmp_path / "s").exists() and not list(tmp_path.glob(".tmp-*"))  # nothing half-written is kept


def test_encoded_split_decodes_the_rows_the_store_holds(folder_dataset, tmp_path):
    built = store.build_store(folder_dataset["train"], tmp_path / "s", 8, 3, "pad", workers=1, progress=False)
    encoded = store.EncodedSplit(folder_dataset["train"], 8, 3, "pad")
    assert encoded.shape == built.shape
    index = torch.tensor([4, 29, 4, 0])
    assert torch.equal(encoded[index], built[index]) and torch.equal(encoded[2:7], built[2:7])


def test_step_rows_decode_exactly_the_batch_that_training_draws(folder_dataset):
    from ddpm_kit.engine.batches import StepRows, global_batch
    from ddpm_kit.seeds import step_generator

    encoded = store.EncodedSplit(folder_dataset["train"], 8, 3, "resize")
    steps = StepRows(encoded, seed=3, first=5, steps=8, micro_batch=6, grad_accum=2, mine=slice(3, 6))
    assert len(steps) == 3
    for k in range(3):
        for micro, rows in enumerate(steps[k]):
            expected, _ = global_batch(encoded, 6, step_generator(3, 5 + k, micro), flip=True)
            got, _ = global_batch(rows, 6, step_generator(3, 5 + k, micro), flip=True)
            assert torch.equal(got[3:], expected[3:])  # this process's rows
            assert (got[:3] == -1).all()  # another process's rows are not decoded here
    with pytest.raises(RuntimeError, match="another batch"):
        global_batch(steps[0][0], 6, step_generator(3, 99, 0), flip=False)


def _build_after_barrier(barrier, results, ds, root):
    barrier.wait()
    built = store.prepared_split(ds, SOURCE, "train", 8, 3, "resize", root=root, progress=False)
    results.put((str(built.folder), built[:].numpy().tobytes()))


def test_two_processes_building_the_same_store_at_once_end_with_one_complete_store(folder_dataset, tmp_path,
                                                                                   monkeypatch):
    """Both processes find no store (a barrier starts them together; each build waits 0.3 s, so
    neither finishes before the other has looked), both build it, one rename wins: one complete
    store, both processes read the same pixels, no temporary folder is left."""
    import multiprocessing
    import time

    root, calls = tmp_path / "root", multiprocessing.get_context("fork").Queue()
    build = store.build_store

    def slow_build(*args, **kwargs):
        calls.put(1)
        time.sleep(0.3)
        return build(*args, workers=1, **{k: v for k, v in kwargs.items() if k != "workers"})

    monkeypatch.setattr(store, "build_store", slow_build)
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    procs = [context.Process(target=_build_after_barrier, args=(barrier, results, folder_dataset["train"], root))
             for _ in range(2)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert calls.qsize() == 2  # both built it
    assert got[0] == got[1]
    assert [p.name for p in root.iterdir()] == [Path(got[0][0]).name]  # one store, no .tmp- or .damaged- left
    expected = to_uint8_tensor(folder_dataset["train"], 8, 3, "resize")
    assert got[0][1] == expected.numpy().tobytes() and store.store_problem(Path(got[0][0])) is None
