"""The run folder: one place for a run's recipe, checkpoints, weights, samples and metrics.

``RunFolder`` writes a run's files (checkpoint contents come from accelerate into the folders it
names; a metric may add figures to the ``eval/`` folder it is handed); commands and the engine call
its methods.

    runs/<name>/
      recipe.toml             the resolved recipe (defaults filled in, overrides applied)
      metrics.jsonl           one JSON object per logging interval (step, loss, lr, grad_norm, ...)
      checkpoints/step_NNNNNNN/   accelerate state (model.safetensors, optimizer, RNG, EMA) + manifest.json
      model/model.safetensors, model/ema.safetensors   final weights
      samples/final.png, samples/final.npz             sample grid and uint8 array [N, C, H, W]
      samples/step_NNNNNNN.png                         periodic grids (train.sample_every)
      eval/metrics.json, eval/bpd_terms.npy            evaluation results
      eval/<metric>[_<sampler>].json                   one metric, samples drawn by another sampler
      checkpoints/best/ (+ best.json)                  the best evaluation so far (train.best_metric)
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
import tomli_w

from .cache import atomic_file
from .errors import DdpmKitError

CHECKPOINT = re.compile(r"^step_(\d{7})$")
MANIFEST = "manifest.json"
BEST = "best"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path, step: int | None) -> None:
    """Record every file's size and SHA-256 (written last: a folder with a manifest is complete)."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in sorted(folder.iterdir()) if p.is_file()}
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"step": step, "files": files}, indent=1))
    tmp.rename(folder / MANIFEST)


def verify_manifest(folder: Path, only: str | None = None) -> str | None:
    """None if every file in the manifest (or just ``only``) is present with its size and checksum,
    else what is wrong."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable manifest ({' '.join(str(exc).split())[:100]})"
    if only is not None and only not in files:
        return f"{only} is not in its manifest"
    for name, meta in files.items():
        if only is not None and name != only:
            continue
        path = folder / name
        if not path.is_file():
            return f"missing file {name}"
        if path.stat().st_size != meta["bytes"] or sha256(path) != meta["sha256"]:
            return f"file {name} does not match its checksum (truncated or corrupt)"
    return None


def _record(line: bytes) -> dict[str, Any] | None:
    """One metrics.jsonl line as a dict, or None for a blank or damaged one."""
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int


def block_width(labels: torch.Tensor | None) -> int | None:
    """The length of the equal blocks of consecutive equal labels (one grid row per class), if any."""
    if labels is None or len(labels) == 0:
        return None
    _, counts = torch.unique_consecutive(labels, return_counts=True)
    return int(counts[0]) if bool((counts == counts[0]).all()) and len(counts) > 1 else None


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    recipe_file = property(lambda self: self.path / "recipe.toml")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    checkpoints = property(lambda self: self.path / "checkpoints")
    model = property(lambda self: self.path / "model")
    samples = property(lambda self: self.path / "samples")
    eval = property(lambda self: self.path / "eval")

    @classmethod
    def existing(cls, path: str | Path) -> RunFolder:
        run = cls(path)
        if not run.recipe_file.is_file():
            raise DdpmKitError(f"{run.path}: not a run folder (no recipe.toml)")
        return run

    def remove(self) -> None:
        """Delete the whole run (``--overwrite``)."""
        shutil.rmtree(self.path)

    def write_recipe(self, resolved: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.recipe_file.write_text(tomli_w.dumps(resolved))

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:07d}"

    def list_checkpoints(self) -> list[Checkpoint]:
        """Checkpoints that were renamed into place (step_NNNNNNN with a manifest), oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = []
        for child in self.checkpoints.iterdir():
            match = CHECKPOINT.match(child.name)
            if match and (child / MANIFEST).is_file():
                found.append(Checkpoint(child, int(match.group(1))))
        return sorted(found, key=lambda c: c.step)

    def latest_checkpoint(self, report=print) -> Checkpoint | None:
        """The newest checkpoint whose files match their manifest; damaged ones are reported and skipped."""
        for checkpoint in reversed(self.list_checkpoints()):
            problem = verify_manifest(checkpoint.path)
            if problem is None:
                return checkpoint
            report(f"{checkpoint.path}: skipped, {problem}")
        return None

    def prune_checkpoints(self, keep: int) -> None:
        for old in self.list_checkpoints()[:-keep]:
            shutil.rmtree(old.path, ignore_errors=True)

    def log_metrics(self, record: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with self.metrics_file.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def drop_metrics_after(self, step: int) -> None:
        """Forget the log lines of steps after ``step`` (logged before an interruption, then trained
        again from an earlier checkpoint), so that no step is logged twice."""
        if not self.metrics_file.is_file():
            return
        lines = self.metrics_file.read_bytes().splitlines(keepends=True)
        kept = [line for line in lines if (record := _record(line)) and record.get("step", 0) <= step]
        if len(kept) != len(lines):
            self.metrics_file.write_bytes(b"".join(kept))

    def training_finished(self, steps: int) -> bool:
        """Whether training to ``steps`` ended here: its final weights were written (summary's
        ``trained_steps``) and are in model/."""
        return (self.read_summary().get("trained_steps") == steps and (self.model / "model.safetensors").is_file()
                and (self.model / "ema.safetensors").is_file())

    def read_metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl's records; a damaged line (a crash mid-write, garbage) is skipped."""
        if not self.metrics_file.is_file():
            return []
        return [record for line in self.metrics_file.read_bytes().splitlines() if (record := _record(line))]

    summary_file = property(lambda self: self.path / "summary.json")

    def read_summary(self) -> dict[str, Any]:
        """summary.json; a damaged one is set aside (summary.damaged.json) with a warning and the
        figures start again, since the stages that wrote them can write them again."""
        if not self.summary_file.is_file():
            return {}
        try:
            summary = json.loads(self.summary_file.read_text())
            if isinstance(summary, dict):
                return summary
        except (ValueError, UnicodeDecodeError):
            pass
        aside = self.summary_file.with_name("summary.damaged.json")
        self.summary_file.replace(aside)
        click.echo(f"warning: {self.summary_file} was damaged (not a JSON object); moved to {aside.name}", err=True)
        return {}

    def add_to_summary(self, **values: float) -> None:
        """Accumulate figures such as train_seconds across resumes."""
        summary = self.read_summary()
        for key, value in values.items():
            summary[key] = summary.get(key, 0.0) + value
        self._write_summary(summary)

    def set_in_summary(self, **values: Any) -> None:
        """Record values such as the processes a stage ran on (replacing earlier ones)."""
        summary = self.read_summary()
        summary.update(values)
        self._write_summary(summary)

    def _write_summary(self, summary: dict[str, Any]) -> None:
        with atomic_file(self.summary_file) as tmp:  # a kill mid-write leaves the previous file whole
            tmp.write_text(json.dumps(summary, indent=2))

    def save_weights(self, step: int | None = None, **weights: dict[str, torch.Tensor]) -> None:
        """model/<name>.safetensors for each state dict given (``model``: raw, ``ema``), on the CPU,
        and model/manifest.json with their sizes and checksums (``weights_problem`` checks them)."""
        from safetensors.torch import save_file

        self.model.mkdir(parents=True, exist_ok=True)
        (self.model / MANIFEST).unlink(missing_ok=True)
        for name, state in weights.items():
            save_file({k: v.contiguous().cpu() for k, v in state.items()}, self.model / f"{name}.safetensors")
        write_manifest(self.model, step)

    def weights_problem(self, weights: Path) -> str | None:
        """What is wrong with final weights ``weights`` (missing, or not what training wrote:
        truncated, overwritten), or None. Weights from before manifests are taken as they are."""
        if not weights.is_file():
            return "missing"
        if not (self.model / MANIFEST).is_file():
            return None
        return verify_manifest(self.model, only=weights.name)

    def save_eval(self, name: str, results: dict[str, Any]) -> Path:
        """eval/<name>.json: a stage's figures."""
        path = self.eval / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2))
        return path

    def save_array(self, path: Path, array: np.ndarray) -> Path:
        """An array a metric keeps (eval/bpd_terms.npy, say) at ``path`` inside the run folder."""
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, array)
        return path

    best_checkpoint = property(lambda self: self.checkpoints / BEST)

    def read_best(self) -> dict[str, Any] | None:
        """checkpoints/best/best.json: the step, metric, mode and value of the best evaluation so far."""
        record = self.best_checkpoint / "best.json"
        return json.loads(record.read_text()) if record.is_file() else None

    def write_best(self, step: int, metric: str, mode: str, value: float) -> None:
        (self.best_checkpoint / "best.json").write_text(
            json.dumps({"step": step, "metric": metric, "mode": mode, "value": value}))

    def save_grid(self, images: torch.Tensor, path: Path, cols: int | None = None) -> Path:
        """uint8 [N, C, H, W] -> one PNG grid (diffusers' make_image_grid), upscaled to >= 256 px."""
        from diffusers.utils import make_image_grid
        from PIL import Image

        arrays = images.permute(0, 2, 3, 1).numpy()
        mode = "L" if arrays.shape[-1] == 1 else "RGB"
        pil = [Image.fromarray(a[..., 0] if mode == "L" else a, mode) for a in arrays]
        cols = cols or math.ceil(math.sqrt(len(pil)))
        rows = math.ceil(len(pil) / cols)
        pil += [Image.new(mode, pil[0].size)] * (rows * cols - len(pil))
        grid = make_image_grid(pil, rows=rows, cols=cols)
        scale = max(1, -(-320 // (cols * pil[0].size[0])))  # at least 320 px wide
        if scale > 1:
            grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        return path

    def save_samples(self, images: torch.Tensor, name: str = "final", labels: torch.Tensor | None = None,
                     drawn_by: str | None = None) -> tuple[Path, Path]:
        """samples/<name>.npz (``images``; ``labels``: the class each was drawn for; ``drawn_by``:
        what drew them, so a metric never scores another sampler's images) and its grid: one row
        per class when the labels come in equal blocks."""
        array_path = self.samples / f"{name}.npz"
        array_path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"images": images.numpy()} | ({} if labels is None else {"labels": labels.numpy()})
        arrays |= {} if drawn_by is None else {"drawn_by": np.array(drawn_by)}
        np.savez_compressed(array_path, **arrays)
        return self.save_grid(images, self.samples / f"{name}.png", cols=block_width(labels)), array_path
