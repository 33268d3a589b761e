"""Training, as an object with named phases (improved-diffusion's TrainLoop, with plugins for its
flags): ``Trainer(components, run)`` checks input and builds, writing nothing; ``fit`` resumes, then
calls ``train_step`` and ``after_step`` per step, then ``finish`` (docs/architecture.md, "The Trainer")."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import click
import torch

from ..conditioning import bind
from ..errors import DdpmKitError
from ..images import save_grid
from ..plugins import plugin_code
from ..progress import progress_bar
from ..runs import RunFolder
from ..seeds import step_generator, step_seed
from .batches import MicroBatch, draw_global_batch, step_rows
from .checkpoints import ema_state_dict, ema_weights, make_ema, refuse_unsafe_pickles, save_checkpoint
from .components import Components
from .distributed import describe, process_state
from .dropout import use_global_batch_dropout
from .evaluation import EvalContext, compute_metrics
from .fast_paths import PathsTaken, correct_compiled_gradients, quiet_known_dynamo_warnings
from .sampling import sample_images
from .stops import GracefulStop, Interrupted, NonFiniteError, StopAgreement
from .trackers import Trackers, require_installed


@dataclass
class StepStats:
    """What the steps since the last log line measured; ``skipped`` counts since this process
    started (a resumed run counts again from 0)."""

    loss_sum: torch.Tensor
    steps: int = 0
    started: float = field(default_factory=time.perf_counter)
    skipped: int = 0
    grad_norm: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # the objective's other keys, summed on the device

    def restart(self) -> None:
        self.loss_sum.zero_()
        self.terms.clear()
        self.started, self.steps = time.perf_counter(), 0

    def add_terms(self, losses: dict[str, torch.Tensor], share: float) -> None:
        """The objective's terms besides ``loss`` (per-example [B] tensors), as batch means."""
        for key, value in losses.items():
            if key not in ENGINE_TERMS and isinstance(value, torch.Tensor) and value.ndim == 1:
                total = self.terms.get(key)
                mean = value.detach().float().mean() * share
                self.terms[key] = mean if total is None else total + mean


ENGINE_TERMS = ("loss", "unweighted_loss", "t")  # what GaussianDiffusion.training_losses adds itself


class Trainer:
    """Trains a recipe's backbone into a run folder on every process a launcher started."""

    def __init__(self, components: Components, run: RunFolder) -> None:
        """Set-up: the accelerator, the seeded backbone, its optimizer and EMA, the training labels.
        Bad input (a tracker not installed, a batch that does not split, a backbone or label column
        the recipe cannot have) fails here, before the run folder is touched."""
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.components, self.run, self.settings = components, run, components.recipe.train
        self.seed, tr, self.created = components.recipe.run.seed, components.recipe.train, time.time()
        self.timed_from = self.created
        process_state()  # the shared state first: only so do several CPU processes join one group
        require_installed(tr.log_with)  # before the run folder is touched
        self.accelerator = Accelerator(mixed_precision=tr.mixed_precision, step_scheduler_with_optimizer=False,
                                       gradient_accumulation_steps=tr.grad_accum, project_dir=str(run.path),
                                       dynamo_backend="inductor" if tr.compile else "no")
        if tr.compile:
            quiet_known_dynamo_warnings()
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        self.micro_batch = tr.batch_size // tr.grad_accum
        if tr.batch_size % (tr.grad_accum * world):
            raise DdpmKitError(f"train.batch_size {tr.batch_size} is not divisible by grad_accum x processes "
                               f"({tr.grad_accum} x {world})")
        self.mine = slice(rank * self.micro_batch // world, (rank + 1) * self.micro_batch // world)
        components.data.split("train")  # the dataset plugin builds, and has a train split
        set_seed(self.seed)  # the backbone's initial weights come from the run's seed
        self.labels = components.data.labels("train")
        self.objective, self.diffusion = components.objective, components.diffusion
        recipe = components.recipe  # whose code a training step runs, to name them when it fails
        self.step_plugins = (components.registry.resolve("objective", recipe.objective.name),
                             components.registry.resolve("backbone", recipe.backbone.name))
        self._build_model()
        self.stats = StepStats(torch.zeros((), device=self.accelerator.device))
        self.loss_nonfinite = torch.zeros((), device=self.accelerator.device)  # 1.0 after a non-finite fp16 loss

    def _build_model(self) -> None:
        """The backbone (dropout masks of the global batch: P processes train like one), its EMA,
        Adam and the lr schedule, prepared by accelerate and registered for checkpoints."""
        from diffusers.optimization import get_scheduler

        tr = self.settings
        model = self.components.build_backbone()
        self.masks = use_global_batch_dropout(model)
        if tr.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.paths = PathsTaken(model)
        self.ema = make_ema(model, tr.ema_decay, warmup=tr.ema_warmup)
        optimizer = torch.optim.Adam(model.parameters(), lr=tr.lr, betas=tr.adam_betas, weight_decay=tr.weight_decay)
        lr_schedule = get_scheduler("constant_with_warmup" if tr.lr_schedule == "constant" else tr.lr_schedule,
                                    optimizer, num_warmup_steps=tr.warmup_steps, num_training_steps=tr.steps)
        self.model, self.optimizer, self.lr_schedule = self.accelerator.prepare(model, optimizer, lr_schedule)
        self.ema.to(self.accelerator.device)
        self.accelerator.register_for_checkpointing(self.ema)
        if self.objective.has_state:  # e.g. importance sampling's loss history
            self.accelerator.register_for_checkpointing(self.objective)

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    # -- the run ---------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> None:
        """Train to ``train.steps``: from step 0, or with ``resume`` from the latest checkpoint."""
        tr = self.settings
        if resume and self.run.training_finished(tr.steps):  # e.g. sampling failed after training
            self.accelerator.print(f"{self.run.path}: training already finished at step {tr.steps} (model/ holds "
                                   "its weights); nothing to train")
            return
        self.trackers = Trackers(tr.log_with, self.run, self.is_main_process)
        self.trackers.start(self.components.recipe, resuming=resume)
        try:  # a stopped or failed run closes its tracker runs too
            record = self.run.read_best() if tr.eval_every else None  # a resumed run continues its checkpoints/best
            self.best: float | None = None if record is None else record["value"]
            first = self.resume() if resume else 0
            self.start(first)
            bar = progress_bar(range(first, tr.steps), initial=first, total=tr.steps, desc="train",
                               enabled=self.is_main_process)
            self.agreement = StopAgreement(self.accelerator)
            with GracefulStop() as stop, correct_compiled_gradients(tr.compile):
                for step in bar:
                    self.train_step(step)
                    self.after_step(step + 1, stop, bar)
            self.agreement.settle()
            bar.close()
            self.finish()
        finally:
            self.trackers.finish()

    def resume(self) -> int:
        """Load the latest complete checkpoint (weights, optimizer, lr, EMA, RNG, objective state);
        the step it was written at, or 0 when there is none."""
        checkpoint = self.run.latest_checkpoint(report=self.accelerator.print)
        if checkpoint is None:
            self.accelerator.print(f"{self.run.path}: no complete checkpoint yet; starting from step 0")
            return 0
        refuse_unsafe_pickles(checkpoint.path)
        self.accelerator.load_state(str(checkpoint.path))
        self.ema.to(self.accelerator.device)  # accelerate loads registered objects' state on the CPU
        self.accelerator.print(f"resuming {self.run.path} from step {checkpoint.step}")
        return checkpoint.step

    def start(self, first: int) -> None:
        """Open the training rows (the data store) for steps ``first``.. and restart the statistics."""
        tr, data = self.settings, self.components.recipe.data
        self.sources = step_rows(self.components.data.rows("train"), self.seed, first, tr.steps, self.micro_batch,
                                 tr.grad_accum, self.mine, data.workers)
        self.stats.restart()
        if self.is_main_process:
            self.run.drop_metrics_after(first)
        self.accelerator.wait_for_everyone()

    # -- one step ----------------------------------------------------------------------------------
    def train_step(self, step: int) -> None:
        """One optimizer step (0-based ``step``): ``forward_backward`` on each of ``train.grad_accum``
        micro-batches, then the lr schedule and the EMA."""
        self.model.train()
        rows = next(self.sources)
        for micro in range(self.settings.grad_accum):
            self.forward_backward(step, self.draw(step, micro, rows[micro]))
        self.lr_schedule.step()
        self.ema.step(self.model.parameters())
        self.stats.steps += 1

    def draw(self, step: int, micro: int, rows) -> MicroBatch:
        """This process's rows of the micro-step's global batch, and the dropout masks of the same
        global batch: both from (run seed, step, micro) (``ddpm_kit.seeds``)."""
        data, c = self.components.recipe.data, self.components.recipe.conditioning
        batch = draw_global_batch(rows, self.micro_batch, step_generator(self.seed, step, micro), data.random_flip,
                                  self.labels, c.label_dropout if c else 0.0, self.objective, self.diffusion)
        if self.masks is not None:
            self.masks.start(step_seed(self.seed, step, micro), self.micro_batch, self.mine)
        return batch.rows(self.mine, self.accelerator.device)

    def forward_backward(self, step: int, batch: MicroBatch) -> None:
        """The objective's loss on one micro-batch and its gradient; the optimizer steps when the
        accumulated gradient is complete and finite."""
        with self.accelerator.accumulate(self.model):
            with plugin_code(self.step_plugins, "failed while training"):
                losses = self.diffusion.training_losses(bind(self.model, batch.labels), batch.x0, self.objective,
                                                        t=batch.t, noise=batch.noise, weights=batch.weights,
                                                        update=False)
            loss = losses["loss"].mean()
            if self.settings.mixed_precision == "fp16":  # read by clip_gradients' "stop" under fp16 only
                self.loss_nonfinite = torch.maximum(self.loss_nonfinite, (~torch.isfinite(loss.detach())).float())
            self.accelerator.backward(loss)
            if self.accelerator.sync_gradients and not self.clip_gradients(step):
                return
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.stats.loss_sum += loss.detach() / self.settings.grad_accum
        self.stats.add_terms(losses, 1 / self.settings.grad_accum)
        if self.objective.learns_from_losses:  # e.g. importance sampling of t
            t, unweighted = (v.cpu() for v in self.accelerator.gather((batch.t, losses["unweighted_loss"])))
            with plugin_code(self.step_plugins[0], "failed while learning from the losses"):
                self.objective.update(t, unweighted)

    def clip_gradients(self, step: int) -> bool:
        """Clip the all-reduced gradient (its norm is the same on every process); False for a
        non-finite one, dropped or stopping the run by ``train.on_nonfinite`` before it reaches the
        weights; under fp16 the scaler's to skip (docs/training.md, "Faults"). One host sync per step."""
        tr = self.settings
        self.stats.grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), tr.grad_clip or math.inf)
        diverged, self.loss_nonfinite = self.loss_nonfinite, torch.zeros_like(self.loss_nonfinite)
        if bool(torch.isfinite(self.stats.grad_norm)):
            return True
        self.stats.skipped += 1
        if tr.mixed_precision == "fp16":
            if tr.on_nonfinite == "stop" and bool(self.accelerator.reduce(diverged, "max")):
                self.optimizer.zero_grad(set_to_none=True)
                raise NonFiniteError(step + 1, self.run)
            return True  # the scaler skips the optimizer step
        self.optimizer.zero_grad(set_to_none=True)
        if tr.on_nonfinite == "stop":
            raise NonFiniteError(step + 1, self.run)
        return False

    # -- at the end of a step ------------------------------------------------------------------------
    def after_step(self, done: int, stop: GracefulStop, bar) -> None:
        """What is due after ``done`` steps: the log line, an evaluation (before this step's
        checkpoint: a new best is saved with it), the checkpoint, a sample grid; then a stop that
        Ctrl-C or SIGTERM asked for, agreed by every process (``StopAgreement``)."""
        tr = self.settings
        checkpoint_due = self.due(tr.checkpoint_every, done)
        if self.due(tr.log_every, done):
            self.log(done, bar)
        if self.due(tr.eval_every, done):
            self.evaluation(done)
        if checkpoint_due:
            self.checkpoint(done)
        if tr.sample_every and done % tr.sample_every == 0 and self.is_main_process:
            self.sample_grid(done)
        signum = self.agreement(stop.signum)
        if signum:
            self.agreement.settle()
            bar.close()
            if not checkpoint_due:
                self.checkpoint(done)
            raise Interrupted(done, self.run, signum)

    def due(self, every: int, done: int) -> bool:
        """Whether what comes every ``every`` steps (0: never) is due after ``done``; the last step's always is."""
        return bool(every) and (done % every == 0 or done == self.settings.steps)

    def log(self, done: int, bar) -> None:
        """One line of metrics.jsonl (and the trackers): the mean loss over processes and steps since
        the last line, lr, gradient norm, speed, skipped steps, and the mean of each other term the
        objective returned (``objective/<key>``)."""
        s = self.stats
        mean_loss = self.accelerator.reduce(s.loss_sum, reduction="mean").item() / s.steps
        rate = s.steps / (time.perf_counter() - s.started)
        terms = {f"objective/{k}": self.accelerator.reduce(v, reduction="mean").item() / s.steps
                 for k, v in sorted(s.terms.items())}
        record = {"step": done, "loss": mean_loss, "lr": self.lr_schedule.get_last_lr()[0],
                  "grad_norm": float(s.grad_norm), "steps_per_s": rate, "skipped_steps": s.skipped,
                  "time": time.time(), **terms}
        self.trackers.log({k: v for k, v in record.items() if k not in ("step", "time")}, step=done)
        if self.is_main_process:
            self.run.log_metrics(record)
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{record['lr']:.2e}")
        s.restart()

    def evaluation(self, done: int) -> None:
        """``train.eval_metrics`` (default: ``eval.metrics``) on the EMA weights, on all processes, to
        metrics.jsonl and the trackers; a new best ``train.best_metric`` is kept as checkpoints/best."""
        tr, recipe, model = self.settings, self.components.recipe, self.unwrapped()
        with ema_weights(model, self.ema), torch.random.fork_rng(devices=[]), torch.inference_mode():
            model.eval()
            context = EvalContext(self.components, model, self.accelerator.device, self.run, seed=recipe.run.seed,
                                  state=self.accelerator, out=self.run.training_eval_dir(done), keep_samples=False)
            results = compute_metrics(context, recipe.eval.metrics if tr.eval_metrics is None else tr.eval_metrics)
        model.train()
        figures = {k: v for k, v in results.items() if isinstance(v, (int, float))}
        if tr.best_metric is not None and tr.best_metric not in figures:
            raise DdpmKitError(f"train.best_metric '{tr.best_metric}' is not among the evaluation's figures: "
                               f"{', '.join(figures)}")
        self.trackers.log({f"eval/{k}": v for k, v in figures.items()}, step=done)
        if self.is_main_process:
            self.run.log_metrics({"step": done, "eval": results})
        value = figures.get(tr.best_metric)
        if value is not None and (self.best is None or (value < self.best if tr.best_mode == "min"
                                                         else value > self.best)):
            self.best = value  # the full training state at this step, as checkpoints/best (replaced atomically)
            save_checkpoint(self.accelerator, self.run, done, self.ema, keep=tr.keep_checkpoints,
                            folder=self.run.best_checkpoint)
            if self.is_main_process:
                self.run.write_best(done, tr.best_metric, tr.best_mode, self.best)

    def checkpoint(self, done: int) -> None:
        """checkpoints/step_<done>: the full training state, complete or absent."""
        save_checkpoint(self.accelerator, self.run, done, self.ema, keep=self.settings.keep_checkpoints)
        self.count_train_time()

    def count_train_time(self) -> None:
        """Add the seconds since the last count to summary.json's train_seconds: at every checkpoint
        and at the end, so a stopped or killed run, resumed from its checkpoint, counts each segment's
        time up to what it kept (the steps a kill throws away are counted when they are redone)."""
        now = time.time()
        if self.is_main_process:
            self.run.add_to_summary(train_seconds=now - self.timed_from)
        self.timed_from = now

    def sample_grid(self, done: int) -> None:
        """samples/step_<done>.png: 16 samples of the EMA weights, also sent to the trackers."""
        model = self.unwrapped()
        with ema_weights(model, self.ema):
            images = sample_images(self.components, model, 16, self.accelerator.device)
        self.trackers.log_grid(done, save_grid(images, self.run.training_grid_file(done)))

    def finish(self) -> None:
        """The final weights (raw and EMA) and the training's figures in summary.json."""
        if self.is_main_process:
            model = self.unwrapped()
            self.run.save_weights(self.settings.steps, model=model.state_dict(), ema=ema_state_dict(model, self.ema))
            self.count_train_time()
            seconds = time.time() - self.created
            self.run.set_in_summary(trained_steps=self.settings.steps, train_processes=describe(self.accelerator.state),
                                    train_paths=self.paths.summary(self.accelerator, model))
            click.echo(f"trained {self.settings.steps} steps in {seconds:.0f} s on "
                       f"{self.accelerator.num_processes} process(es) -> {self.run.path}")
        self.accelerator.wait_for_everyone()
