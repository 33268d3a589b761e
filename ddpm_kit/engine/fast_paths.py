"""The fast paths (mixed precision, channels-last, torch.compile): how they are switched on, the
fixes they need, and what a run really computed in (summary.json's ``train_paths``)."""

from __future__ import annotations

from contextlib import nullcontext

import torch


def autocast_for(device: torch.device, mixed_precision: str):
    """torch.autocast for ``sample.mixed_precision`` ("no", "bf16", "fp16") on ``device``."""
    if mixed_precision == "no":
        return nullcontext()
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def quiet_known_dynamo_warnings() -> None:
    """Silence Dynamo's note on diffusers' lru_cache'd torch-version check in its up/downsampling
    blocks (raised on every compile, harmless: the cached value never changes within a process)."""
    import warnings

    warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`", category=UserWarning)


def correct_compiled_gradients(compiling: bool):
    """Inductor's layout optimisation off while compiling a training step: it gives wrong UNet2DModel
    gradients on CPU in torch 2.13 (docs/performance.md; the forward alone, sampling, is unaffected)."""
    import torch._inductor.config as inductor_config

    return inductor_config.patch(layout_optimization=False) if compiling else nullcontext()


def compiled_graphs() -> int:
    """How many graphs dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class PathsTaken:
    """What the training steps ran through (summary.json's train_paths): the graphs dynamo compiled
    after set-up, and the dtype and memory format the backbone's first 2-d convolution computed in,
    watched in the first training forward (autocast and channels-last are settings until seen)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.seen: dict[str, object] = {}
        conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
        self.handle = conv.register_forward_hook(self._record) if conv is not None else None
        self.graphs_before = compiled_graphs()

    def _record(self, module, args, output) -> None:
        self.seen = {"forward_dtype": str(output.dtype).removeprefix("torch."),
                     "channels_last": bool(output.is_contiguous(memory_format=torch.channels_last)
                                           and not output.is_contiguous())}
        self.handle.remove()

    def summary(self, accelerator, model: torch.nn.Module) -> dict[str, object]:
        """These figures, with the precision setting and the dtype of ``model``'s (unwrapped) parameters."""
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        return {"compiled_graphs": compiled_graphs() - self.graphs_before,
                "mixed_precision": accelerator.mixed_precision, "parameter_dtype": dtype, **self.seen}
