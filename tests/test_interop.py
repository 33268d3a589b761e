"""diffusers interoperability: export to DDPMPipeline, import a UNet folder, safe loading."""

import numpy as np
import pytest
import torch

from ddpm_kit.builtins.samplers import sample_ancestral
from ddpm_kit.errors import DdpmKitError
from helpers import TINY, cli


def test_diffusers_unet_folder_round_trips_with_identical_outputs(registry, tmp_path):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    original = UNet2DModel(sample_size=8, in_channels=1, out_channels=2, block_out_channels=(16, 32),
                           layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4)
    original.save_pretrained(tmp_path / "pipe" / "unet")
    net = registry.build("backbone", "unet2d", {"pretrained": str(tmp_path / "pipe")},
                         in_channels=1, out_channels=2, image_size=8)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0, 10, 999])
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), original(x, t).sample, rtol=0, atol=1e-6)
    with pytest.raises(DdpmKitError, match=r"has in/out channels, size and class embeddings \(1, 2, 8, None\), the recipe needs \(1, 1, 8, None\)"):
        registry.build("backbone", "unet2d", {"pretrained": str(tmp_path / "pipe")}, in_channels=1, out_channels=1,
                       image_size=8)
    with pytest.raises(DdpmKitError, match="is not a diffusers UNet folder"):
        registry.build("backbone", "unet2d", {"pretrained": str(tmp_path)}, in_channels=1, out_channels=1, image_size=8)


@pytest.mark.slow
def test_exported_run_samples_in_diffusers_like_in_ddpm_kit(finished_run, tmp_path, registry):
    run, _ = finished_run
    out = run.parent / "exported"
    result = cli("export", str(run), str(out))
    assert result.returncode == 0, result.stderr
    assert "note: Ho's fixedlarge" in result.stdout
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file() and (out / "README.md").is_file()
    theirs, ours = diffusers_and_ddpm_kit_samples(registry, run)
    np.testing.assert_allclose(theirs, ours, atol=2e-3)


def diffusers_and_ddpm_kit_samples(registry, run, seed=5, n=4):
    """The exported pipeline's 50-step (all T) samples and ddpm-kit's ancestral ones on the same noise, in [0, 1]."""
    from diffusers import DDPMPipeline

    from ddpm_kit.engine import load_run_model
    from ddpm_kit.workflow import load_run

    pipe = DDPMPipeline.from_pretrained(str(run.parent / "exported"))
    theirs = pipe(batch_size=n, generator=torch.Generator().manual_seed(seed), num_inference_steps=50,
                  output_type="np").images  # [B, H, W, C] in [0, 1]
    components, run_folder = load_run(registry, run)
    model = load_run_model(components, run_folder, use_ema=True, device=torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(n, 1, 8, 8, generator=g)
    ours = sample_ancestral(components.diffusion, model, x_T, generator=g, clip_denoised=True)
    return theirs, (ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.mark.slow
def test_exported_learned_range_run_samples_in_diffusers_like_in_ddpm_kit(tmp_path):
    """improved-diffusion's learned_range is diffusers' learned_range: same images on the same noise."""
    from ddpm_kit.plugins import get_registry

    registry = get_registry()  # with ddpm-kit-improved, which provides learned_range and hybrid
    run = tmp_path / "run"
    result = cli("run", str(TINY), "--run-dir", str(run), "--set", "diffusion.variance.name=learned_range",
                      "--set", "objective.name=hybrid", "--set", "train.steps=4", "--no-sample", "--no-eval")
    assert result.returncode == 0, result.stderr
    result = cli("export", str(run), str(tmp_path / "exported"))
    assert result.returncode == 0, result.stderr
    theirs, ours = diffusers_and_ddpm_kit_samples(registry, run)
    assert np.isfinite(theirs).all() and theirs.std() > 0.05
    np.testing.assert_allclose(theirs, ours, atol=2e-3)


@pytest.mark.slow
def test_exporting_a_raw_learned_variance_is_refused_with_the_reason(tmp_path):
    run = tmp_path / "run"
    result = cli("run", str(TINY), "--run-dir", str(run), "--set", "diffusion.variance.name=learned",
                      "--set", "objective.name=vlb", "--set", "train.steps=2", "--no-sample", "--no-eval")
    assert result.returncode == 0, result.stderr
    result = cli("export", str(run), str(tmp_path / "exported"))
    assert result.returncode == 2 and not (tmp_path / "exported").exists()
    assert result.stderr.strip().splitlines()[-1].endswith(
        "cannot export variance 'learned' to diffusers' DDPMScheduler: its extra channels are a log-variance, and "
        "DDPMScheduler reads them as the variance itself (variance_type 'learned') or as an interpolation weight "
        "('learned_range'), so the exported pipeline would sample NaN; exportable variances: fixed_beta, "
        "fixed_beta_tilde, learned_range")
    assert "Traceback" not in result.stderr


def test_mu_prediction_export_is_refused_clearly(registry, tmp_path):
    from ddpm_kit.engine import build_components
    from ddpm_kit.export import diffusers_scheduler_config
    from ddpm_kit.recipe import load_recipe

    recipe, _ = load_recipe(TINY, registry, ["diffusion.parameterization.name=mu"])
    with pytest.raises(DdpmKitError, match="cannot express parameterization 'mu'"):
        diffusers_scheduler_config(build_components(recipe, registry))
