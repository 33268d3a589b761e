"""Export a run as a diffusers pipeline folder (DDPMPipeline.from_pretrained reads it)."""

from __future__ import annotations

from pathlib import Path

import torch

from .engine import Components, load_run_model
from .errors import DdpmKitError
from .runs import RunFolder


def diffusers_scheduler_config(components: Components) -> tuple[dict, list[str]]:
    """DDPMScheduler settings equal to the run's diffusion, and notes on what differs."""
    d = components.diffusion
    param, variance = d.parameterization, d.variance
    prediction_type = param.diffusers_prediction_type
    if prediction_type is None:
        raise DdpmKitError(f"diffusers' DDPMScheduler cannot express parameterization '{param.name}' (it predicts "
                           "epsilon, sample or v_prediction); retrain with eps or x0 to export")
    if variance.diffusers_variance_type is None:
        registry = components.registry
        exportable = [n for n in registry.names("variance") if registry.build("variance", n).diffusers_variance_type]
        raise DdpmKitError(f"cannot export variance '{variance.name}' to diffusers' DDPMScheduler: "
                           f"{variance.not_in_diffusers}; exportable variances: {', '.join(exportable)}")
    if components.num_classes is not None:
        raise DdpmKitError("cannot export a class-conditional run: diffusers' DDPMPipeline calls the UNet without "
                           "class labels; load model/ema.safetensors with ddpm-kit (ddpm-kit sample --class K)")
    sampler = components.recipe.sample.sampler
    notes = [
        "betas are written exactly (trained_betas), but diffusers keeps them in float32: sampled images "
        "agree with ddpm-kit's to about 1e-4.",
    ]
    if variance.name == "fixed_beta":
        notes.append("Ho's fixedlarge uses log beta-tilde_1 as the log-variance at t=0; diffusers' fixed_large "
                     "uses beta_0. No noise is added at t=0, so samples are unaffected; only the bound's L_0 "
                     "(bits/dim) would differ, and diffusers computes no bound.")
    if sampler.name != "ancestral":
        notes.append(f"the run samples with '{sampler.name}'; the exported DDPMScheduler is ancestral sampling.")
    config = dict(num_train_timesteps=d.num_timesteps, trained_betas=d.betas.tolist(),
                  prediction_type=prediction_type, variance_type=variance.diffusers_variance_type,
                  clip_sample=bool(sampler.params.get("clip_denoised", True)), clip_sample_range=1.0)
    return config, notes


def export_diffusers(components: Components, run: RunFolder, out: Path, *, use_ema: bool = True) -> list[str]:
    """Write ``out`` as a DDPMPipeline folder (unet/, scheduler/, model_index.json, README.md)."""
    from diffusers import DDPMPipeline, DDPMScheduler

    config, notes = diffusers_scheduler_config(components)
    model = load_run_model(components, run, use_ema=use_ema, device=torch.device("cpu"))
    if (unet := getattr(model, "unet", None)) is None:
        raise DdpmKitError(f"backbone '{components.recipe.backbone.name}' is not a diffusers UNet2DModel; "
                           "only unet2d runs can be exported")
    pipeline = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**config))
    pipeline.save_pretrained(str(out), safe_serialization=True)
    r = components.recipe
    card = [f"# {run.path.name} (exported by ddpm-kit)", "",
            f"- parameterization: {r.diffusion.parameterization.name} -> prediction_type `{config['prediction_type']}`",
            f"- variance: {r.diffusion.variance.name} -> variance_type `{config['variance_type']}`",
            f"- T = {config['num_train_timesteps']}, schedule `{r.diffusion.schedule.name}`, weights: "
            f"{'EMA' if use_ema else 'raw'}",
            f"- data: {r.data.dataset.name}, {r.data.channels} x {r.data.image_size} x {r.data.image_size}, "
            "scaled to [-1, 1]", "", "```python", "from diffusers import DDPMPipeline",
            f"images = DDPMPipeline.from_pretrained('{out}')(batch_size=16).images", "```", "", "## Notes", ""]
    card += [f"- {n}" for n in notes]
    (out / "README.md").write_text("\n".join(card) + "\n")
    return notes
