"""The ``unet2d`` backbone: diffusers' UNet2DModel, with the paper's CIFAR-10 net as a preset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..conditioning import NULL_LABEL
from ..errors import DdpmKitError, did_you_mean
from ..hookspecs import hookimpl

# Ho et al.'s CIFAR-10 network (35.7M parameters), in the layout of google/ddpm-cifar10-32.
PRESETS: dict[str, dict[str, Any]] = {
    "ddpm-cifar10": dict(
        block_out_channels=(128, 256, 256, 256), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        dropout=0.1, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6,
        norm_num_groups=32),
    # Ho et al.'s 256x256 net (CelebA-HQ, LSUN Church/Bedroom/Cat; paper: 114M parameters): the
    # reference code's ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attention at 16x16
    # (scripts/run_celebahq.py, run_lsun.py), in the layout of google/ddpm-church-256. Dropout 0.0
    # as in those scripts. 113.7M parameters.
    "ddpm-256": dict(
        block_out_channels=(128, 128, 256, 256, 512, 512), layers_per_block=2,
        down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
        dropout=0.0, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6,
        norm_num_groups=32),
    # ~1.1M parameters: the quickstart's net for 16x16 digits on a 2-core CPU.
    "cpu-small": dict(
        block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8),
    # ~0.2M parameters, for tests.
    "cpu-tiny": dict(
        block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4),
}
# The larger LSUN Bedroom model ("about 256 million parameters, by increasing filter count", paper
# Appendix B): base width 192 instead of 128, 255.8M parameters.
PRESETS["ddpm-256-large"] = {**PRESETS["ddpm-256"], "block_out_channels": (192, 192, 384, 384, 768, 768)}


class UNetBackbone(torch.nn.Module):
    """``forward(x, t, class_labels=None) -> tensor``: UNet2DModel with the backbone contract of
    ddpm-kit. A class-conditional net has ``num_classes + 1`` class embeddings (UNet2DModel's
    ``num_class_embeds``, added to the timestep embedding); the last is "no label" (NULL_LABEL)."""

    def __init__(self, unet: torch.nn.Module, num_classes: int | None = None) -> None:
        super().__init__()
        self.unet, self.num_classes = unet, num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes is None:
            if class_labels is not None:
                raise DdpmKitError("this unet2d was built without classes (no [conditioning] in the recipe)")
            return self.unet(x, t).sample
        if class_labels is None:
            class_labels = torch.full((x.shape[0],), NULL_LABEL, device=x.device, dtype=torch.long)
        return self.unet(x, t, class_labels=torch.where(class_labels < 0, self.num_classes, class_labels)).sample


def unet2d(in_channels: int, out_channels: int, image_size: int, preset: str = "cpu-small",
           pretrained: str | None = None, num_classes: int | None = None, **unet_kwargs: Any) -> UNetBackbone:
    """Build a UNet2DModel from a preset plus any UNet2DModel keyword arguments, or load one from a
    local diffusers folder (``pretrained``: a UNet folder or a pipeline folder with ``unet/``).
    ``num_classes`` (a conditional recipe's) adds the class embedding."""
    classes = {} if num_classes is None else {"num_class_embeds": num_classes + 1}
    if pretrained is not None:
        return UNetBackbone(load_pretrained_unet(pretrained, in_channels, out_channels, image_size, classes),
                            num_classes)
    if preset not in PRESETS:
        raise DdpmKitError(f"unknown unet2d preset '{preset}'{did_you_mean(preset, PRESETS)}")
    config = {**PRESETS[preset], **unet_kwargs, **classes}
    levels = len(config["block_out_channels"])
    if image_size % (2 ** (levels - 1)):
        raise DdpmKitError(f"image_size {image_size} cannot be halved {levels - 1} times by preset '{preset}' "
                           f"({levels} levels); use a multiple of {2 ** (levels - 1)}")
    from diffusers import UNet2DModel  # imported here: keeps `ddpm-kit plugins` fast

    try:
        unet = UNet2DModel(sample_size=image_size, in_channels=in_channels, out_channels=out_channels, **config)
    except (TypeError, ValueError) as exc:
        raise DdpmKitError(f"UNet2DModel rejected the configuration: {exc}") from None
    return UNetBackbone(unet, num_classes)


def unet_keyword_arguments() -> list[str]:
    """What ``unet2d``'s ``**unet_kwargs`` take: UNet2DModel's arguments, less the ones it sets itself."""
    import inspect

    from diffusers import UNet2DModel

    return sorted(set(inspect.signature(UNet2DModel.__init__).parameters)
                  - {"self", "sample_size", "in_channels", "out_channels", "num_class_embeds"})


def load_pretrained_unet(path: str, in_channels: int, out_channels: int, image_size: int,
                         classes: dict[str, int]):
    """A UNet2DModel from a local folder (safetensors only, never a download), checked against the recipe."""
    from diffusers import UNet2DModel

    folder = Path(path).expanduser()
    if (folder / "unet" / "config.json").is_file():
        folder = folder / "unet"
    if not (folder / "config.json").is_file():
        raise DdpmKitError(f"backbone.pretrained: '{path}' is not a diffusers UNet folder (no config.json, "
                           "and no unet/config.json)")
    try:
        unet = UNet2DModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise DdpmKitError(f"backbone.pretrained: cannot load '{folder}': {' '.join(str(exc).split())[:300]}") from None
    got = (unet.config.in_channels, unet.config.out_channels, unet.config.sample_size,
           unet.config.num_class_embeds)
    want = (in_channels, out_channels, image_size, classes.get("num_class_embeds"))
    if got != want:
        raise DdpmKitError(f"backbone.pretrained: '{folder}' has in/out channels, size and class embeddings "
                           f"{got}, the recipe needs {want} (data.channels, the variance's output channels, "
                           "data.image_size, conditioning.num_classes + 1)")
    return unet


@hookimpl
def register_backbones(register):
    register("unet2d", unet2d, extra_params=unet_keyword_arguments)  # [backbone] keys are checked against these
