"""ddpm-kit-tinyconv on its own, installed (`pip install .` then `pytest tests`): ddpm_kit.testing only."""

import torch

from ddpm_kit.api import get_registry
from ddpm_kit.testing import train_tiny_run


def test_the_backbone_is_sized_by_the_engine_and_trains_a_tiny_run(tmp_path):
    net = get_registry().build("backbone", "tinyconv", {}, in_channels=1, out_channels=2, image_size=8)
    assert net(torch.zeros(3, 1, 8, 8), torch.tensor([0, 5, 9])).shape == (3, 2, 8, 8)
    run = train_tiny_run(tmp_path / "run", 'backbone={name="tinyconv"}', "train.steps=2", sample=False)
    assert (run / "model" / "ema.safetensors").is_file()
