"""The unet2d backbone: the paper's network and automatic output channels."""

import pytest
import torch

from ddpm_kit.engine import build_components
from ddpm_kit.errors import DdpmKitError
from ddpm_kit.recipe import load_recipe

from helpers import TINY, tiny_with


def test_paper_cifar10_preset_has_35_7M_parameters(registry):
    net = registry.build("backbone", "unet2d", {"preset": "ddpm-cifar10"}, in_channels=3, out_channels=3, image_size=32)
    n = sum(p.numel() for p in net.parameters())
    assert 35.70e6 < n < 35.80e6  # Ho et al.: 35.7M
    unet = net.unet
    assert unet.config.block_out_channels == (128, 256, 256, 256) and unet.config.layers_per_block == 2
    assert unet.config.dropout == 0.1
    # self-attention at the 16x16 level only (second down block, third up block)
    assert [type(b).__name__ for b in unet.down_blocks] == ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"]


def test_learned_variance_doubles_output_channels(registry, tmp_path):
    path = tiny_with(tmp_path, ('name = "fixed_beta"', 'name = "simple"'), ('name = "learned"', 'name = "vlb"'))
    recipe, _ = load_recipe(path, registry)
    model = build_components(recipe, registry).build_backbone()
    out = model(torch.zeros(2, 1, 8, 8), torch.tensor([1, 2]))
    assert out.shape == (2, 2, 8, 8)


def test_unet_kwargs_pass_through_and_bad_ones_are_clear(registry):
    net = registry.build("backbone", "unet2d", {"preset": "cpu-tiny", "block_out_channels": [8, 16]},
                         in_channels=1, out_channels=1, image_size=8)
    assert net.unet.config.block_out_channels == (8, 16) or list(net.unet.config.block_out_channels) == [8, 16]
    with pytest.raises(DdpmKitError, match="backbone 'unet2d' has no parameter 'no_such_arg'; valid: act_fn,"):
        registry.build("backbone", "unet2d", {"preset": "cpu-tiny", "no_such_arg": 1},
                       in_channels=1, out_channels=1, image_size=8)
    with pytest.raises(DdpmKitError, match="UNet2DModel rejected the configuration"):
        registry.build("backbone", "unet2d", {"preset": "cpu-tiny", "block_out_channels": [8]},
                       in_channels=1, out_channels=1, image_size=8)


def test_tiny_recipe_model_runs(registry):
    recipe, _ = load_recipe(TINY, registry)
    c = build_components(recipe, registry)
    out = c.diffusion.training_losses(c.build_backbone(), torch.rand(4, 1, 8, 8) * 2 - 1, c.objective)
    assert out["loss"].shape == (4,) and torch.isfinite(out["loss"]).all()
