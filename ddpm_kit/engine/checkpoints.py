"""Checkpoints and weights: accelerate's full state written atomically, EMA weights, safe loading."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..errors import DdpmKitError
from ..runs import RunFolder, write_manifest
from .components import Components


def make_ema(model: torch.nn.Module, decay: float, warmup: bool):
    """diffusers' EMAModel over the model's parameters."""
    from diffusers.training_utils import EMAModel

    # min_decay=decay: the paper's constant decay (after diffusers' first update, which copies the
    # weights); otherwise diffusers' (1+n)/(10+n) warm-up.
    return EMAModel(model.parameters(), decay=decay, min_decay=0.0 if warmup else decay)


def ema_state_dict(model: torch.nn.Module, ema) -> dict[str, torch.Tensor]:
    """The model's state dict with the EMA's shadow values in place of the parameters."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for (name, _), shadow in zip(model.named_parameters(), ema.shadow_params):
        state[name] = shadow.detach().clone()
    return state


@contextmanager
def ema_weights(model: torch.nn.Module, ema):
    """The model temporarily holding the EMA weights."""
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        yield model
    finally:
        ema.restore(model.parameters())


def refuse_unsafe_pickles(folder: Path) -> None:
    """Load every pickled file of a checkpoint with ``weights_only=True`` (tensors, plain data and
    numpy arrays only) before accelerate reads it, so a crafted file cannot run code."""
    import numpy.dtypes

    allowed = [np.core.multiarray._reconstruct, np.ndarray, np.dtype] + [
        getattr(numpy.dtypes, n) for n in dir(numpy.dtypes) if n.endswith("DType")]
    for path in sorted(folder.iterdir()):
        if path.suffix not in (".pkl", ".bin", ".pt", ".pth"):
            continue
        try:
            with torch.serialization.safe_globals(allowed):
                torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError for forbidden globals, others for corrupt files
            raise DdpmKitError(f"{path}: refusing to load: not a plain-data checkpoint file "
                               f"({' '.join(str(exc).split())[:200]})") from None


def save_checkpoint(accelerator, run: RunFolder, step: int, ema, keep: int, folder: Path | None = None) -> None:
    """accelerate's full training state, written to a temporary folder and renamed when complete
    (to checkpoints/step_NNNNNNN, or to ``folder``, which is then not counted among the kept)."""
    final = folder or run.checkpoint_dir(step)
    tmp = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    with _written_or_explained(run, step, tmp):
        accelerator.save_state(str(tmp))  # every process writes its random state: no barrier inside
    accelerator.wait_for_everyone()  # so the manifest lists every process's file, complete
    if accelerator.is_main_process:
        with _written_or_explained(run, step, tmp):
            write_manifest(tmp, step)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        if folder is None:
            run.prune_checkpoints(keep)
    accelerator.wait_for_everyone()


@contextmanager
def _written_or_explained(run: RunFolder, step: int, tmp: Path):
    """A failed write (disk full, a file size limit, a quota: OSError, safetensors' and torch's own
    errors) removes the partial checkpoint and says which earlier one is intact."""
    try:
        yield
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        last = run.latest_checkpoint(report=lambda _: None)
        kept = f"{last.path} (step {last.step}) is intact" if last else "no earlier checkpoint exists"
        raise DdpmKitError(f"could not write the checkpoint of step {step} to {tmp.parent} ({_reason(exc)}); "
                           f"{kept}: free space, then resume with `{run.resume_command}`") from exc


def _reason(exc: Exception) -> str:
    """An I/O error's reason in a few words ("File too large", "No space left on device")."""
    text = getattr(exc, "strerror", None) or " ".join(str(exc).split())
    for reason in ("File too large", "No space left on device", "Disk quota exceeded"):
        if reason in text:
            return reason
    return text[:200]


def load_run_model(components: Components, run: RunFolder, *, use_ema: bool, device: torch.device) -> torch.nn.Module:
    """The run's backbone with its final weights (EMA or raw)."""
    from safetensors.torch import load_file

    model = components.build_backbone()
    weights = run.weights_file(use_ema)
    again = f"`{run.resume_command}`"
    problem = run.weights_problem(weights)
    if problem == "missing":
        raise DdpmKitError(f"{run.path}: no trained weights at {weights}; finish training with {again}")
    if problem is not None:
        raise DdpmKitError(f"{weights}: {problem}: not the weights training wrote; write them again from the "
                           f"latest checkpoint: delete {run.model} and run {again}")
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise DdpmKitError(f"{weights}: cannot read weights ({exc})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DdpmKitError(f"{weights}: weights do not fit the recipe's backbone "
                           f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)")
    return model.to(device).eval()
