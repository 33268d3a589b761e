"""Every paper-scale recipe builds its model and runs two training steps on stand-in data."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from ddpm_kit.cli import main

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.toml"))
PAPER = [r for r in RECIPES if "uoft-cs/cifar10" in r.read_text() or 'extends = "paper_base.toml"' in r.read_text()]


def random_images(folder, count, height, width, seed):
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def cifar_stand_in(tmp_path_factory):
    """Sixteen random 32x32 RGB images in a local folder (no CIFAR-10 download in tests)."""
    return random_images(tmp_path_factory.mktemp("cifar-stand-in"), 16, 32, 32, seed=0)


def test_all_table_2_rows_are_here():
    names = {r.stem for r in PAPER}
    assert {"mu_vlb_learned", "mu_vlb_fixed_beta", "mu_mse_fixed_beta", "eps_vlb_learned", "eps_vlb_fixed_beta",
            "eps_fixed_beta", "x0_fixed_beta", "eps_fixed_beta_tilde", "mu_vlb_fixed_beta_tilde"} <= names
    assert {r.stem for r in (RECIPES[0].parent / "mini").glob("*_*.toml")} == names - {"paper_base"}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", PAPER, ids=[r.stem for r in PAPER])
def test_paper_recipe_trains_two_steps_on_stand_in_data(recipe, cifar_stand_in, tmp_path, fresh_accelerate_state):
    run = tmp_path / "run"
    main(["run", str(recipe), "--run-dir", str(run), "--no-sample", "--no-eval",
          "--set", f'data.dataset={{name="imagefolder", path="{cifar_stand_in}"}}',
          "--set", "train.steps=2", "--set", "train.batch_size=2", "--set", "train.warmup_steps=1",
          "--set", "train.checkpoint_every=0", "--set", "train.log_every=1"])
    weights = load_file(str(run / "model" / "model.safetensors"))
    n = sum(w.numel() for w in weights.values())
    assert 35.7e6 < n < 35.9e6  # the paper's UNet (x2 output channels when the variance is learned)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    shutil.rmtree(run)  # 140 MB per run


# -- the 256x256 models ------------------------------------------------------------------------
RECIPES_256 = sorted((RECIPES[0].parent / "paper256").glob("*.toml"))
RECIPES_256 = [r for r in RECIPES_256 if r.stem != "base"]


@pytest.mark.parametrize("preset,paper", [("ddpm-256", 114e6), ("ddpm-256-large", 256e6)])
def test_256_presets_have_the_papers_parameter_counts(registry, preset, paper):
    import torch

    with torch.device("meta"):  # counts without allocating 1 GB
        net = registry.build("backbone", "unet2d", {"preset": preset}, in_channels=3, out_channels=3, image_size=256)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - paper) / paper < 0.01, n  # Ho et al. Appendix B: 114M, and "about 256M" for Bedroom
    kinds = [type(b).__name__ for b in net.unet.down_blocks]
    assert kinds == ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"]  # attention at 16x16 only


def test_every_256_recipe_checks_and_cites_its_source(registry):
    from ddpm_kit.recipe import load_recipe

    assert {r.stem for r in RECIPES_256} == {"celebahq", "lsun_church", "lsun_bedroom", "lsun_bedroom_large", "lsun_cat"}
    steps = {}
    for file in RECIPES_256:
        recipe, _ = load_recipe(file, registry)
        assert "Appendix B" in file.read_text() and recipe.train.lr == 2e-5 and recipe.train.batch_size == 64
        steps[file.stem] = recipe.train.steps
    assert steps == {"celebahq": 500_000, "lsun_church": 1_200_000, "lsun_bedroom": 2_400_000,
                     "lsun_bedroom_large": 1_150_000, "lsun_cat": 1_800_000}


@pytest.fixture(scope="module")
def stand_in_256(tmp_path_factory):
    """Four random 300x260 RGB images: not square, so the center crop to 256 is exercised."""
    return random_images(tmp_path_factory.mktemp("stand-in-256"), 4, 260, 300, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES_256, ids=[r.stem for r in RECIPES_256])
def test_256_recipe_trains_two_steps_on_stand_in_images(recipe, stand_in_256, tmp_path, fresh_accelerate_state):
    """The recipes' own nets (114M and 256M parameters) on stand-in images center-cropped from 300x260:
    celebahq at 64x64, the rest at 32x32 (the parameter count does not depend on the size; `recipe
    check` holds every 256 recipe at its full size)."""
    run = tmp_path / "run"
    size = 64 if recipe.stem == "celebahq" else 32
    main(["run", str(recipe), "--run-dir", str(run), "--no-sample", "--no-eval",
          "--set", f'data.dataset={{name="imagefolder", path="{stand_in_256}"}}', "--set", f"data.image_size={size}",
          "--set", "train.steps=2", "--set", "train.batch_size=1", "--set", "train.warmup_steps=1",
          "--set", "train.checkpoint_every=0", "--set", "train.log_every=1"])
    weights = load_file(str(run / "model" / "model.safetensors"))
    n = sum(w.numel() for w in weights.values())
    assert abs(n - (256e6 if "large" in recipe.stem else 114e6)) < 0.01 * 256e6
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    shutil.rmtree(run)
