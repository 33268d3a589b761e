"""Evaluation of the EMA weights during training, with a ``best`` checkpoint kept by a named
figure (the trackers are ``trackers.py``'s)."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import DdpmKitError
from ..runs import RunFolder
from .checkpoints import ema_weights, save_checkpoint
from .components import Components
from .evaluation import EvalContext, compute_metrics


class TrainingEvaluation:
    """``train.eval_metrics`` (default: ``eval.metrics``) on the EMA weights every
    ``train.eval_every`` steps, on all processes; ``checkpoints/best`` follows ``train.best_metric``."""

    def __init__(self, components: Components, run: RunFolder, state, trackers) -> None:
        tr = components.recipe.train
        self.components, self.run, self.state, self.trackers = components, run, state, trackers
        self.every, self.metric, self.mode = tr.eval_every, tr.best_metric, tr.best_mode
        self.specs = tr.eval_metrics if tr.eval_metrics is not None else components.recipe.eval.metrics
        record = run.read_best()  # a resumed run continues from its checkpoints/best
        self.best: float | None = None if record is None else record["value"]

    def due(self, step: int, last: int) -> bool:
        return bool(self.every) and (step % self.every == 0 or step == last)

    def __call__(self, accelerator, model: torch.nn.Module, ema, step: int, keep: int) -> dict[str, Any]:
        """Evaluate at ``step``; log to metrics.jsonl and the trackers; save ``best`` if it improved."""
        unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
        out = self.run.training_eval_dir(step)
        with ema_weights(unwrapped, ema), torch.random.fork_rng(devices=[]), torch.inference_mode():
            unwrapped.eval()
            context = EvalContext(self.components, unwrapped, accelerator.device, self.run,
                                  seed=self.components.recipe.run.seed, state=self.state, out=out, keep_samples=False)
            results = compute_metrics(context, self.specs)
        unwrapped.train()
        figures = {k: v for k, v in results.items() if isinstance(v, (int, float))}
        if self.metric is not None and self.metric not in figures:
            raise DdpmKitError(f"train.best_metric '{self.metric}' is not among the evaluation's figures: "
                               f"{', '.join(figures)}")
        self.trackers.log({f"eval/{k}": v for k, v in figures.items()}, step=step)
        if accelerator.is_main_process:
            self.run.log_metrics({"step": step, "eval": results})
        if self.metric is not None and self._improves(figures[self.metric]):
            self.best = figures[self.metric]
            self._save_best(accelerator, ema, step, keep)
        return results

    def _improves(self, value: float) -> bool:
        return self.best is None or (value < self.best if self.mode == "min" else value > self.best)

    def _save_best(self, accelerator, ema, step: int, keep: int) -> None:
        """The full training state at this step, as checkpoints/best (replaced atomically)."""
        save_checkpoint(accelerator, self.run, step, ema, keep=keep, folder=self.run.best_checkpoint)
        if accelerator.is_main_process:
            self.run.write_best(step, self.metric, self.mode, self.best)
