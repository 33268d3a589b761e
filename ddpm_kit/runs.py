"""The run folder: the one place that names a run's files, writes them and reads them back.

Every file of a run is named by a ``RunFolder`` method; ``LAYOUT`` lists them (docs/training.md
prints it, and a test holds the two together). Files are read back through ``RunFolder.read_*``:
a damaged one is one line naming it and the command that writes it again (``DamagedRunFile``, exit 2).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import click
import numpy as np
import torch
import tomli_w

from .cache import atomic_file
from .errors import DdpmKitError

CHECKPOINT = re.compile(r"^step_(\d{7})$")
MANIFEST = "manifest.json"


class LayoutEntry(NamedTuple):
    pattern: str  # relative to the run folder; <...> stands for a part of the name
    holds: str
    rewrite: str | None = None  # the command that writes it again ({run}: the run folder)


RESUME = "ddpm-kit run {run}/recipe.toml --run-dir {run} --resume latest"
REWEIGH = "rm -r {run}/model; " + RESUME  # the final weights again, from the latest checkpoint
RESAMPLE = "ddpm-kit sample {run} --name <name>"
LAYOUT: tuple[LayoutEntry, ...] = (
    LayoutEntry("recipe.toml", "the resolved recipe (defaults filled in, overrides applied)"),
    LayoutEntry("metrics.jsonl", "one JSON object per log interval (step, loss, lr, grad_norm, steps_per_s, "
                "time, objective/<term> for each other term the objective returns) and per in-training "
                "evaluation (step, eval)"),
    LayoutEntry("summary.json", "seconds per stage and the processes each ran on; train_seconds adds up "
                "across resumes"),
    LayoutEntry("provenance.jsonl", "one record per command that wrote here (run, resume, sample, evaluate): "
                "ddpm-kit's version and commit, library versions, the plugin and distribution behind each "
                "component, every plugin loaded, device, processes, launcher"),
    LayoutEntry("trackers.json", "the ids of the run's W&B and MLflow runs, which a resumed run reopens "
                "(train.log_with)"),
    LayoutEntry("<name>/", "TensorBoard's event files and the recipe as hyperparameters "
                "(train.log_with = [\"tensorboard\"]); a resumed run writes into the same folder"),
    LayoutEntry("wandb/", "W&B's run files (train.log_with = [\"wandb\"]; offline with WANDB_MODE=offline)"),
    LayoutEntry("checkpoints/step_<NNNNNNN>/", "accelerate's training state (model.safetensors, optimizer, "
                "lr schedule, RNG, EMA) and manifest.json, written last", RESUME),
    LayoutEntry("checkpoints/best/", "the state of the best in-training evaluation, and best.json "
                "(train.best_metric)"),
    LayoutEntry("model/model.safetensors", "the final raw weights", REWEIGH),
    LayoutEntry("model/ema.safetensors", "the final EMA weights (sampling and evaluation use them)", REWEIGH),
    LayoutEntry("model/manifest.json", "the final weights' sizes and SHA-256", REWEIGH),
    LayoutEntry("samples/<name>.npz", "uint8 samples [N, C, H, W], their classes and what drew them: final, "
                "or final_<tag> for another sampler or guidance", RESAMPLE),
    LayoutEntry("samples/eval_<N>[_<tag>].npz", "samples a metric drew (fid), reused while the same sampler, "
                "guidance and weights would draw them", "rm {path}; ddpm-kit evaluate {run} --metric fid"),
    LayoutEntry("samples/<name>.png", "their grid (a row per class for a conditional run)", RESAMPLE),
    LayoutEntry("samples/<name>_progressive.png", "x0-hat along the reverse chain of the first 8 images", RESAMPLE),
    LayoutEntry("samples/step_<NNNNNNN>.png", "grids during training (train.sample_every)"),
    LayoutEntry("eval/metrics.json", "every figure of the recipe's metrics, and which weights",
                "ddpm-kit evaluate {run}"),
    LayoutEntry("eval/<metric>[_<tag>].json", "one metric (evaluate --metric), its samples drawn as <tag> says",
                "ddpm-kit evaluate {run} --metric ... with the options that wrote it"),
    LayoutEntry("eval/[<label>_]bpd_terms.npy", "bpd: per image, L_0 .. L_{T-1} and the prior term L_T in "
                "bits/dim", "ddpm-kit evaluate {run} --metric bpd"),
    LayoutEntry("eval/[<label>_]xstart_mse.npy", "bpd: per image and timestep, the error of x0-hat",
                "ddpm-kit evaluate {run} --metric bpd"),
    LayoutEntry("eval/[<label>_]bpd_per_timestep.png", "bpd: bits per timestep and the cumulative bound"),
    LayoutEntry("eval/[<label>_]rate_distortion.png", "bpd: rate against distortion (paper Fig. 5)"),
    LayoutEntry("eval/fid_features_<N>[_<tag>].npz", "fid: the samples' features, confident flags and seed "
                "(what `ddpm-kit report` pairs two runs' samples by)", "ddpm-kit evaluate {run} --metric fid"),
    LayoutEntry("eval/<file>", "what another metric keeps (EvalContext.save_array)"),
    LayoutEntry("eval/during-training/step_<NNNNNNN>/", "the metrics' files of each in-training evaluation "
                "(train.eval_every)"),
)


def layout_text() -> str:
    """The layout as docs/training.md shows it: each entry's pattern and what it holds."""
    import textwrap

    indent = max(len(e.pattern) for e in LAYOUT) + 4
    lines = ["runs/<name>/"]
    for e in LAYOUT:
        lines += textwrap.wrap(e.holds, 100, initial_indent=f"  {e.pattern}".ljust(indent),
                               subsequent_indent=" " * indent)
    return "\n".join(lines) + "\n"


def _entry_for(relative: str) -> tuple[LayoutEntry, dict[str, str]] | None:
    """The most specific layout entry a run-relative path matches, and the parts of its name."""
    found = []
    for entry in LAYOUT:
        regex = re.escape(entry.pattern).replace(r"\[", "(?:").replace(r"\]", ")?")
        regex = re.sub(r"<(\w+)>", r"(?P<\1>.+?)", regex.replace(r"\<", "<").replace(r"\>", ">"))
        if match := re.fullmatch(regex, relative):
            literal = len(re.sub(r"<\w+>|\[|\]", "", entry.pattern))
            found.append((literal, entry, match.groupdict()))
    if not found:
        return None
    _, entry, parts = max(found, key=lambda f: f[0])
    return entry, parts


def _write_json(path: Path, value: dict[str, Any]) -> None:
    """A JSON file written whole or not at all (a kill mid-write leaves the previous file)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2))


class DamagedRunFile(DdpmKitError):
    """A run's file that cannot be read (truncated, overwritten, not what ddpm-kit wrote)."""


class Samples(NamedTuple):
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor | None  # the class each was drawn for (conditional runs)
    drawn_by: str | None  # what drew them (sampler, guidance, weights), compared before they are reused


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path, step: int | None) -> None:
    """Record every file's size and SHA-256 (written last: a folder with a manifest is complete)."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in sorted(folder.iterdir()) if p.is_file()}
    with atomic_file(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps({"step": step, "files": files}, indent=1))


def verify_manifest(folder: Path, only: str | None = None) -> str | None:
    """None if every file in the manifest (or just ``only``) is present with its size and checksum,
    else what is wrong."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable manifest ({' '.join(str(exc).split())[:100]})"
    if only is not None and only not in files:
        return f"{only} is not in its manifest"
    checked = files if only is None else {only: files[only]}
    for name, meta in checked.items():
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


def _records(path: Path) -> list[dict[str, Any]]:
    """A JSON-lines file's records, oldest first; none when it is absent."""
    return [record for line in path.read_bytes().splitlines() if (record := _record(line))] if path.is_file() else []


class Checkpoint(NamedTuple):
    path: Path
    step: int


def _joined(*parts: str | int | None) -> str:
    return "_".join(str(p) for p in parts if p is not None and p != "")


class RunFolder:
    """A run's folder: every file's name (``LAYOUT``), its writers and its checked readers."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # -- names ---------------------------------------------------------------------------------
    recipe_file = property(lambda self: self.path / "recipe.toml")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    summary_file = property(lambda self: self.path / "summary.json")
    provenance_file = property(lambda self: self.path / "provenance.jsonl")
    trackers_file = property(lambda self: self.path / "trackers.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    best_checkpoint = property(lambda self: self.checkpoints / "best")
    model = property(lambda self: self.path / "model")
    samples = property(lambda self: self.path / "samples")
    eval = property(lambda self: self.path / "eval")
    resume_command = property(lambda self: RESUME.format(run=self.path))  # continues it from its latest checkpoint

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:07d}"

    def weights_file(self, use_ema: bool = True) -> Path:
        """model/ema.safetensors, or model/model.safetensors (the raw weights)."""
        return self.model / ("ema.safetensors" if use_ema else "model.safetensors")

    @staticmethod
    def sample_name(tag: str | None = None) -> str:
        """The samples of ``ddpm-kit sample`` (``final``), or of another sampler or guidance (``final_<tag>``)."""
        return _joined("final", tag)

    @staticmethod
    def metric_sample_name(num_images: int, tag: str | None = None) -> str:
        """Samples a metric drew: ``eval_<N>[_<tag>]``."""
        return _joined(f"eval_{num_images}", tag)

    def samples_file(self, name: str = "final") -> Path:
        return self.samples / f"{name}.npz"

    def grid_file(self, name: str = "final") -> Path:
        return self.samples / f"{name}.png"

    def progressive_file(self, name: str = "final") -> Path:
        return self.samples / f"{name}_progressive.png"

    def training_grid_file(self, step: int) -> Path:
        return self.samples / f"step_{step:07d}.png"

    def results_file(self, metric: str | None = None, tag: str | None = None) -> Path:
        """eval/metrics.json (every metric of the recipe), or eval/<metric>[_<tag>].json (one)."""
        return self.eval / f"{_joined(metric, tag) if metric else 'metrics'}.json"

    def training_eval_dir(self, step: int) -> Path:
        return self.eval / "during-training" / f"step_{step:07d}"

    def eval_file(self, name: str, out: Path | None = None) -> Path:
        """A file a metric keeps, in eval/ (or ``out``: an in-training evaluation's folder)."""
        return (out or self.eval) / name

    def bpd_file(self, kind: str, label: str = "bpd", suffix: str = ".npy", out: Path | None = None) -> Path:
        """The bits/dim metric's files: eval/[<label>_]<kind><suffix>, ``kind`` one of bpd_terms,
        xstart_mse (arrays), bpd_per_timestep, rate_distortion (plots); ``label`` names the metric
        and its settings (bpd, bpd_fixed_beta_tilde_50, ...)."""
        return self.eval_file(_joined(None if label == "bpd" else label, kind) + suffix, out)

    def features_file(self, num_samples: int, tag: str | None = None, out: Path | None = None) -> Path:
        """The fid metric's per-sample features: eval/fid_features_<N>[_<tag>].npz."""
        return self.eval_file(_joined(f"fid_features_{num_samples}", tag) + ".npz", out)

    # -- reading, checked ------------------------------------------------------------------------
    @classmethod
    def existing(cls, path: str | Path) -> RunFolder:
        run = cls(path)
        if not run.recipe_file.is_file():
            raise DdpmKitError(f"{run.path}: not a run folder (no recipe.toml)")
        return run

    def damaged(self, path: Path, reason: str) -> DamagedRunFile:
        """The error for a file of this run that cannot be read: its name, why, and how to write it again."""
        found = None
        if path.is_relative_to(self.path):
            found = _entry_for(path.relative_to(self.path).as_posix() + ("/" if path.is_dir() else ""))
        text = f"{path}: damaged ({reason})"
        if found is not None and found[0].rewrite is not None:
            entry, parts = found
            command = entry.rewrite.format(run=self.path, path=path)
            for key, value in parts.items():
                command = command.replace(f"<{key}>", value or "")
            text += f"; write it again with `{command}`"
        return DamagedRunFile(text)

    def read_json(self, path: Path) -> dict[str, Any]:
        """A JSON object the run wrote ({} when the file is absent)."""
        if not path.is_file():
            return {}
        try:
            value = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError) as exc:
            raise self.damaged(path, f"not JSON: {type(exc).__name__}") from None
        if not isinstance(value, dict):
            raise self.damaged(path, f"a JSON {type(value).__name__}, not an object")
        return value

    def read_arrays(self, path: Path) -> dict[str, np.ndarray] | None:
        """The arrays of an .npz (or the one array of an .npy, as ``{"array": ...}``); None when absent."""
        if not path.is_file():
            return None
        try:
            if path.suffix == ".npy":
                return {"array": np.load(path, allow_pickle=False)}
            with np.load(path, allow_pickle=False) as stored:
                return {key: stored[key] for key in stored.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise self.damaged(path, type(exc).__name__) from None

    def read_samples(self, name: str = "final") -> Samples | None:
        """samples/<name>.npz, or None when there is none."""
        arrays = self.read_arrays(self.samples_file(name))
        if arrays is None:
            return None
        if "images" not in arrays:
            raise self.damaged(self.samples_file(name), "no images in it")
        labels = torch.from_numpy(arrays["labels"]) if "labels" in arrays else None
        by = str(arrays["drawn_by"]) if "drawn_by" in arrays else None
        return Samples(torch.from_numpy(arrays["images"]), labels, by)

    def read_metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl's records; a damaged line (a crash mid-write, garbage) is skipped."""
        return _records(self.metrics_file)

    def read_provenance(self) -> list[dict[str, Any]]:
        """provenance.jsonl's records, oldest first (a damaged line is skipped)."""
        return _records(self.provenance_file)

    def read_summary(self) -> dict[str, Any]:
        """summary.json; a damaged one is set aside (summary.damaged.json) with a warning and the
        figures start again, since the stages that wrote them can write them again."""
        try:
            return self.read_json(self.summary_file)
        except DamagedRunFile:
            aside = self.summary_file.with_name("summary.damaged.json")
            self.summary_file.replace(aside)
            click.echo(f"warning: {self.summary_file} was damaged (not a JSON object); moved to {aside.name}", err=True)
            return {}

    def read_best(self) -> dict[str, Any] | None:
        """checkpoints/best/best.json: the step, metric, mode and value of the best evaluation so far."""
        return self.read_json(self.best_checkpoint / "best.json") or None

    def weights_problem(self, weights: Path) -> str | None:
        """What is wrong with final weights ``weights`` (missing, or not what training wrote:
        truncated, overwritten), or None. Weights from before manifests are taken as they are."""
        if not weights.is_file():
            return "missing"
        if not (self.model / MANIFEST).is_file():
            return None
        return verify_manifest(self.model, only=weights.name)

    def training_finished(self, steps: int) -> bool:
        """Whether training to ``steps`` ended here: its final weights were written (summary's
        ``trained_steps``) and are in model/."""
        return (self.read_summary().get("trained_steps") == steps and self.weights_file(False).is_file()
                and self.weights_file(True).is_file())

    # -- checkpoints -----------------------------------------------------------------------------
    def list_checkpoints(self) -> list[Checkpoint]:
        """Checkpoints that were renamed into place (step_NNNNNNN with a manifest), oldest first."""
        children = self.checkpoints.iterdir() if self.checkpoints.is_dir() else ()
        found = [Checkpoint(child, int(match.group(1))) for child in children
                 if (match := CHECKPOINT.match(child.name)) and (child / MANIFEST).is_file()]
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

    # -- writing -----------------------------------------------------------------------------------
    def remove(self) -> None:
        """Delete the whole run (``--overwrite``)."""
        shutil.rmtree(self.path)

    def write_recipe(self, resolved: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.recipe_file.write_text(tomli_w.dumps(resolved))

    def log_metrics(self, record: dict[str, Any]) -> None:
        self._append(self.metrics_file, record)

    def record_provenance(self, record: dict[str, Any]) -> None:
        self._append(self.provenance_file, record)

    def _append(self, path: Path, record: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
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

    def add_to_summary(self, **values: float) -> None:
        """Accumulate figures such as train_seconds across resumes."""
        summary = self.read_summary()
        for key, value in values.items():
            summary[key] = summary.get(key, 0.0) + value
        _write_json(self.summary_file, summary)

    def set_in_summary(self, **values: Any) -> None:
        """Record values such as the processes a stage ran on (replacing earlier ones)."""
        summary = self.read_summary()
        summary.update(values)
        _write_json(self.summary_file, summary)

    def write_tracker_ids(self, ids: dict[str, str]) -> None:
        """trackers.json: the tracker runs (W&B, MLflow) a resumed run reopens."""
        _write_json(self.trackers_file, ids)

    def save_weights(self, step: int | None = None, **weights: dict[str, torch.Tensor]) -> None:
        """model/<name>.safetensors for each state dict given (``model``: raw, ``ema``), on the CPU,
        and model/manifest.json with their sizes and checksums (``weights_problem`` checks them)."""
        from safetensors.torch import save_file

        self.model.mkdir(parents=True, exist_ok=True)
        (self.model / MANIFEST).unlink(missing_ok=True)
        for name, state in weights.items():
            save_file({k: v.contiguous().cpu() for k, v in state.items()}, self.model / f"{name}.safetensors")
        write_manifest(self.model, step)

    def save_results(self, results: dict[str, Any], metric: str | None = None, tag: str | None = None) -> Path:
        """eval/metrics.json, or eval/<metric>[_<tag>].json: an evaluation's figures."""
        path = self.results_file(metric, tag)
        _write_json(path, results)
        return path

    def save_array(self, path: Path, array: np.ndarray) -> Path:
        """An array a metric keeps (eval/bpd_terms.npy, say) at ``path`` inside the run folder."""
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, array)
        return path

    def write_best(self, step: int, metric: str, mode: str, value: float) -> None:
        (self.best_checkpoint / "best.json").write_text(
            json.dumps({"step": step, "metric": metric, "mode": mode, "value": value}))

    def save_samples(self, images: torch.Tensor, name: str = "final", labels: torch.Tensor | None = None,
                     drawn_by: str | None = None) -> tuple[Path, Path]:
        """samples/<name>.npz (``images``; ``labels``: the class each was drawn for; ``drawn_by``:
        what drew them, so a metric never scores another sampler's images) and its grid: one row
        per class when the labels come in equal blocks."""
        from .images import block_width, save_grid

        array_path = self.samples_file(name)
        array_path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"images": images.numpy()} | ({} if labels is None else {"labels": labels.numpy()})
        arrays |= {} if drawn_by is None else {"drawn_by": np.array(drawn_by)}
        np.savez_compressed(array_path, **arrays)
        return save_grid(images, self.grid_file(name), cols=block_width(labels)), array_path
