"""Experiment trackers (``train.log_with``): accelerate's tracker classes, started on the main
process with the recipe as the run's configuration, fed what metrics.jsonl holds, and guarded so
that a tracker that fails (its folder unwritable, its server gone) costs a warning, never the run.
How each tracker continues a resumed run: docs/monitoring.md."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..errors import DdpmKitError
from ..runs import RunFolder


def require_installed(names: list[str]) -> None:
    """``train.log_with`` checked: each tracker's package must be installed (a one-line error if not)."""
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise DdpmKitError(f"train.log_with: tracker '{name}' is not installed (pip install {name}); "
                               "remove it from the recipe or install it")


def flat_config(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The recipe as one level of ``table.key`` names with plain values (lists and None as text),
    which every tracker's configuration / hyperparameters / params take."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def send_image(tracker, grid: np.ndarray, step: int) -> None:
    """One RGB image [H, W, 3] to a tracker, each in its own way (trackers without images skip it)."""
    if tracker.name == "tensorboard":
        tracker.log_images({"samples": grid[None]}, step=step, dataformats="NHWC")
    elif tracker.name == "mlflow":
        import mlflow

        mlflow.log_image(grid, key="samples", step=step)
    elif hasattr(tracker, "log_images"):
        tracker.log_images({"samples": [grid]}, step=step)


class Trackers:
    """The run's trackers, on the main process (the other processes hold none)."""

    def __init__(self, names: list[str], run: RunFolder, main_process: bool) -> None:
        self.names, self.run = names if main_process else [], run
        self.active: list = []

    def start(self, recipe, resuming: bool) -> None:
        """Start (or reopen) each tracker's run and store the recipe as its configuration."""
        if not self.names:
            return
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        config = flat_config(recipe.model_dump(mode="json"))
        kept = self.run.read_json(self.run.trackers_file)
        for name in self.names:
            cls = LOGGER_TYPE_TO_CLASS[name]
            kwargs = {"wandb": {"dir": str(self.run.path), "name": self.run.path.name, "resume": "allow",
                                "id": kept.get("wandb")},
                      "mlflow": {"run_name": self.run.path.name, "run_id": kept.get("mlflow")}}.get(name, {})
            try:
                tracker = (cls(self.run.path.name, str(self.run.path), **kwargs) if cls.requires_logging_directory
                           else cls(self.run.path.name, **kwargs))
                tracker.start()
                tracker.store_init_configuration(self._configuration(tracker, config))
            except Exception as exc:  # noqa: BLE001 - a tracker never costs the run
                self._warn(name, "could not start", exc)
                continue
            self.active.append(tracker)
            if resuming:
                self._say_how_it_resumed(name, tracker, kept)
        self._keep_ids()

    def _configuration(self, tracker, config: dict[str, Any]) -> dict[str, Any]:
        """The recipe to store; for a reopened MLflow run, only the parameters it lacks (MLflow's
        parameters cannot change: a changed one keeps its first value, said in one line)."""
        if tracker.name != "mlflow" or tracker.run_id is None:
            return config
        import mlflow

        before = mlflow.get_run(tracker.run_id).data.params
        changed = [k for k, v in config.items() if k in before and before[k] != str(v)]
        if changed:
            click.echo(f"mlflow: run {tracker.run_id} keeps the first values of {', '.join(changed)} (MLflow "
                       "parameters cannot change; recipe.toml has the current ones)")
        return {k: v for k, v in config.items() if k not in before}

    def _say_how_it_resumed(self, name: str, tracker, kept: dict[str, Any]) -> None:
        if name == "wandb" and tracker.run.settings.mode == "offline":
            click.echo(f"wandb (offline): a resumed run cannot reopen its offline run; this segment logs to a new "
                       f"offline run with the same id {tracker.run.id} (`wandb sync` uploads both)")
        elif name == "mlflow" and "mlflow" in kept:
            click.echo(f"mlflow: continuing run {kept['mlflow']}")

    def _keep_ids(self) -> None:
        """trackers.json: the ids a resumed run reopens."""
        ids = {tracker.name: tracker.run.id if tracker.name == "wandb" else tracker.active_run.info.run_id
               for tracker in self.active if tracker.name in ("wandb", "mlflow")}
        if ids:
            self.run.write_tracker_ids(ids)

    def log(self, values: dict[str, float], step: int) -> None:
        self._each("could not log", lambda tracker: tracker.log(values, step=step))

    def log_grid(self, step: int, path: Path) -> None:
        """Send a saved sample grid (PNG) to every tracker that takes images."""
        from PIL import Image

        grid = np.asarray(Image.open(path).convert("RGB"))
        self._each("could not log the sample grid", lambda tracker: send_image(tracker, grid, step))

    def finish(self) -> None:
        self._each("could not finish", lambda tracker: tracker.finish())
        self.active = []

    def _each(self, what: str, call) -> None:
        """``call(tracker)`` for every tracker; a failure drops that tracker with a warning."""
        for tracker in list(self.active):
            try:
                call(tracker)
            except Exception as exc:  # noqa: BLE001 - a tracker never costs the run
                self.active.remove(tracker)
                self._warn(tracker.name, what, exc)

    def _warn(self, name: str, what: str, exc: BaseException) -> None:
        text = str(exc)
        detail = textwrap.shorten(text.splitlines()[0], 160) if text else ""
        click.echo(f"warning: tracker '{name}' {what} ({type(exc).__name__}: {detail}); training goes on "
                   "without it (metrics.jsonl has every figure)", err=True)
