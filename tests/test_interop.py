"""diffusers interoperability: export to DDPMPipeline, import a UNet folder, safe loading."""

import numpy as np
import pytest
import torch

from ddpm_kit.builtins.samplers import sample_ancestral
from ddpm_kit.errors import DdpmKitError
from helpers import TINY, ddpm_kit


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
    with pytest.raises(DdpmKitError, match=r"has in/out channels and size \(1, 2, 8\), the recipe needs \(1, 1, 8\)"):
        registry.build("backbone", "unet2d", {"pretrained": str(tmp_path / "pipe")}, in_channels=1, out_channels=1,
                       image_size=8)
    with pytest.raises(DdpmKitError, match="is not a diffusers UNet folder"):
        registry.build("backbone", "unet2d", {"pretrained": str(tmp_path)}, in_channels=1, out_channels=1, image_size=8)


@pytest.mark.slow
def test_exported_run_samples_in_diffusers_like_in_ddpm_kit(finished_run, tmp_path, registry):
    from diffusers import DDPMPipeline

    from ddpm_kit.engine import load_run_model
    from ddpm_kit.workflow import load_run

    run, _ = finished_run
    out = tmp_path / "exported"
    result = ddpm_kit("export", str(run), str(out))
    assert result.returncode == 0, result.stderr
    assert "note: Ho's fixedlarge" in result.stdout
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file() and (out / "README.md").is_file()
    pipe = DDPMPipeline.from_pretrained(str(out))
    theirs = pipe(batch_size=4, generator=torch.Generator().manual_seed(5), num_inference_steps=50,
                  output_type="np").images  # [B, H, W, C] in [0, 1]
    components, run_folder = load_run(registry, run)
    model = load_run_model(components, run_folder, use_ema=True, device=torch.device("cpu"))
    g = torch.Generator().manual_seed(5)
    x_T = torch.randn(4, 1, 8, 8, generator=g)
    ours = sample_ancestral(components.diffusion, model, x_T, generator=g, clip_denoised=True)
    ours = (ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(theirs, ours, atol=2e-3)


def test_mu_prediction_export_is_refused_clearly(registry, tmp_path):
    from ddpm_kit.engine import build_components
    from ddpm_kit.export import diffusers_scheduler_config
    from ddpm_kit.recipe import load_recipe

    recipe, _ = load_recipe(TINY, registry, ["diffusion.parameterization.name=mu"])
    with pytest.raises(DdpmKitError, match="cannot express parameterization 'mu'"):
        diffusers_scheduler_config(build_components(recipe, registry))
