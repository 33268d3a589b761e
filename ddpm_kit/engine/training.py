"""The training loop on accelerate: one global batch per step, sliced over the processes,
checkpoints that are complete or absent, Ctrl-C and non-finite steps handled."""

from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import nullcontext

import torch

from ..conditioning import bind
from ..errors import DdpmKitError
from ..interfaces import Objective
from ..progress import progress_bar
from ..runs import RunFolder
from .checkpoints import ema_weights, make_ema, refuse_unsafe_pickles, save_checkpoint, save_final_weights
from .components import Components
from .data import global_batch, load_labels, load_split, step_generator, step_rows
from .dropout import use_global_batch_dropout
from .monitoring import TrainingEvaluation, log_grid, trackers
from .sampling import quiet_known_dynamo_warnings, sample_images


def train(components: Components, run: RunFolder, *, resume: bool = False) -> None:
    """Train as the recipe says, checkpointing into ``run``; ``resume`` continues the latest checkpoint."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler

    r, tr = components.recipe, components.recipe.train
    accelerator = Accelerator(mixed_precision=tr.mixed_precision, step_scheduler_with_optimizer=False,
                              gradient_accumulation_steps=tr.grad_accum, project_dir=str(run.path),
                              log_with=trackers(tr.log_with) or None,
                              dynamo_backend="inductor" if tr.compile else "no")
    if tr.compile:
        quiet_known_dynamo_warnings()
    if tr.log_with:
        accelerator.init_trackers(run.path.name)
    evaluation = TrainingEvaluation(components, run, accelerator) if tr.eval_every else None
    world, rank = accelerator.num_processes, accelerator.process_index
    micro_batch = tr.batch_size // tr.grad_accum
    if tr.batch_size % (tr.grad_accum * world):
        raise DdpmKitError(f"train.batch_size {tr.batch_size} is not divisible by grad_accum x processes "
                           f"({tr.grad_accum} x {world})")
    set_seed(r.run.seed)
    pixels = load_split(components, "train")
    labels = load_labels(components, "train")
    label_dropout = r.conditioning.label_dropout if r.conditioning else 0.0
    model = components.build_backbone()
    masks = use_global_batch_dropout(model)  # dropout masks of the global batch: P processes equal one
    if tr.channels_last:
        model = model.to(memory_format=torch.channels_last)
    first_conv = FirstConvolution(model)
    graphs_before = compiled_graphs()
    ema = make_ema(model, tr.ema_decay, warmup=tr.ema_warmup)
    optimizer = torch.optim.Adam(model.parameters(), lr=tr.lr, betas=tr.adam_betas, weight_decay=tr.weight_decay)
    lr_schedule = get_scheduler("constant_with_warmup" if tr.lr_schedule == "constant" else tr.lr_schedule, optimizer,
                                num_warmup_steps=tr.warmup_steps, num_training_steps=tr.steps)
    model, optimizer, lr_schedule = accelerator.prepare(model, optimizer, lr_schedule)
    ema.to(accelerator.device)
    accelerator.register_for_checkpointing(ema)
    objective = components.objective
    tracks_losses = type(objective).update is not Objective.update  # e.g. importance sampling of t
    if hasattr(objective, "state_dict") and hasattr(objective, "load_state_dict"):
        accelerator.register_for_checkpointing(objective)
    start = 0
    if resume:
        checkpoint = run.latest_checkpoint(report=accelerator.print)
        if checkpoint is None:
            accelerator.print(f"{run.path}: no complete checkpoint yet; starting from step 0")
        else:
            refuse_unsafe_pickles(checkpoint.path)
            accelerator.load_state(str(checkpoint.path))
            start = checkpoint.step
            accelerator.print(f"resuming {run.path} from step {start}")
    diffusion = components.diffusion
    bar = progress_bar(range(start, tr.steps), initial=start, total=tr.steps, desc="train",
                       enabled=accelerator.is_main_process)
    loss_sum = torch.zeros((), device=accelerator.device)
    interval_start, interval_steps, skipped = time.perf_counter(), 0, 0
    grad_norm = torch.zeros(())
    done = start
    mine = slice(rank * micro_batch // world, (rank + 1) * micro_batch // world)
    sources = step_rows(pixels, r.run.seed, start, tr.steps, micro_batch, tr.grad_accum, mine, r.data.workers)
    with GracefulStop() as stop, correct_compiled_gradients(tr.compile):
        for step in bar:
            model.train()
            rows = next(sources)
            for micro in range(tr.grad_accum):
                g = step_generator(r.run.seed, step, micro)
                x0, y = global_batch(rows[micro], micro_batch, g, r.data.random_flip, labels, label_dropout)
                t, weights = objective.sample_t(diffusion, micro_batch, torch.device("cpu"), g)
                noise = torch.randn(x0.shape, generator=g)
                if masks is not None:
                    masks.start((r.run.seed * 1_000_003 + step) * 64 + micro, micro_batch, mine)
                x0, t, weights, noise = (v[mine].to(accelerator.device) for v in (x0, t, weights, noise))
                y = None if y is None else y[mine].to(accelerator.device)
                with accelerator.accumulate(model):
                    losses = diffusion.training_losses(bind(model, y), x0, objective, t=t, noise=noise,
                                                       weights=weights, update=False)
                    loss = losses["loss"].mean()
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        # the norm of the all-reduced gradient: the same on every process
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), tr.grad_clip or math.inf)
                        # one host sync per step: a non-finite step never reaches the weights or the EMA
                        # (fp16: the gradient scaler skips such steps itself)
                        if tr.mixed_precision != "fp16" and not bool(torch.isfinite(grad_norm)):
                            optimizer.zero_grad(set_to_none=True)
                            if tr.on_nonfinite == "stop":
                                raise NonFiniteError(step + 1, run)
                            skipped += 1
                            continue
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                loss_sum += loss.detach() / tr.grad_accum
                if tracks_losses:
                    objective.update(*(v.cpu() for v in accelerator.gather((t, losses["unweighted_loss"]))))
            lr_schedule.step()
            ema.step(model.parameters())
            interval_steps += 1
            done = step + 1
            checkpoint_due = tr.checkpoint_every and (done % tr.checkpoint_every == 0 or done == tr.steps)
            if done % tr.log_every == 0 or done == tr.steps:
                mean_loss = accelerator.reduce(loss_sum, reduction="mean").item() / interval_steps
                rate = interval_steps / (time.perf_counter() - interval_start)
                record = {"step": done, "loss": mean_loss, "lr": lr_schedule.get_last_lr()[0],
                          "grad_norm": float(grad_norm), "steps_per_s": rate, "skipped_steps": skipped,
                          "time": time.time()}
                accelerator.log({k: v for k, v in record.items() if k not in ("step", "time")}, step=done)
                if accelerator.is_main_process:
                    run.log_metrics(record)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{record['lr']:.2e}")
                loss_sum.zero_()
                interval_start, interval_steps = time.perf_counter(), 0
            if evaluation is not None and evaluation.due(done, tr.steps):  # before the checkpoint of this step
                evaluation(accelerator, model, ema, done, keep=tr.keep_checkpoints)
            if checkpoint_due:
                save_checkpoint(accelerator, run, done, ema, keep=tr.keep_checkpoints)
            if tr.sample_every and done % tr.sample_every == 0 and accelerator.is_main_process:
                unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
                with ema_weights(unwrapped, ema):
                    images = sample_images(components, unwrapped, 16, accelerator.device)
                log_grid(accelerator, done, run.save_grid(images, run.samples / f"step_{done:07d}.png"))
            # Ctrl-C: stop between steps. Several processes agree at log steps (one small all-reduce).
            if world == 1 and stop.requested or world > 1 and done % tr.log_every == 0 and bool(
                    accelerator.reduce(torch.tensor(float(stop.requested), device=accelerator.device), "max")):
                bar.close()
                if not checkpoint_due:
                    save_checkpoint(accelerator, run, done, ema, keep=tr.keep_checkpoints)
                raise Interrupted(done, run)
    bar.close()
    if accelerator.is_main_process:
        save_final_weights(run, accelerator.unwrap_model(model, keep_torch_compile=False), ema)
        run.set_in_summary(train_paths=paths_taken(accelerator, model, first_conv, graphs_before))
    accelerator.wait_for_everyone()
    for tracker in accelerator.trackers:  # not end_training(): it would end the process group that
        tracker.finish()                 # sampling and evaluation still use


class FirstConvolution:
    """Watches the backbone's first 2-d convolution in the first training forward: the dtype and
    memory format it really computed in (autocast and channels-last are settings until seen)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.seen: dict[str, object] = {}
        conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
        self.handle = conv.register_forward_hook(self._record) if conv is not None else None

    def _record(self, module, args, output) -> None:
        self.seen = {"forward_dtype": str(output.dtype).removeprefix("torch."),
                     "channels_last": bool(output.is_contiguous(memory_format=torch.channels_last)
                                           and not output.is_contiguous())}
        self.handle.remove()


def compiled_graphs() -> int:
    """How many graphs dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def paths_taken(accelerator, model: torch.nn.Module, first_conv: FirstConvolution, graphs_before: int) -> dict[str, object]:
    """What the training steps ran through (summary.json's train_paths): graphs dynamo compiled
    while training, the precision setting, and the dtype and memory format the first convolution
    computed in."""
    parameter = next(accelerator.unwrap_model(model, keep_torch_compile=False).parameters())
    return {"compiled_graphs": compiled_graphs() - graphs_before, "mixed_precision": accelerator.mixed_precision,
            "parameter_dtype": str(parameter.dtype).removeprefix("torch."), **first_conv.seen}


class GracefulStop:
    """Turn the first Ctrl-C (SIGINT) into a request to stop after the current step; a second one
    interrupts at once."""

    requested = False

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> GracefulStop:
        self._installed = threading.current_thread() is threading.main_thread()
        if self._installed:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


class NonFiniteError(DdpmKitError):
    """Training produced a NaN/inf gradient; the last good checkpoint is kept."""

    def __init__(self, step: int, run: RunFolder) -> None:
        last = run.latest_checkpoint(report=lambda _: None)
        kept = f"the last good checkpoint is {last.path} (step {last.step})" if last else "no checkpoint was written yet"
        super().__init__(f"non-finite loss or gradient at step {step}; stopped before applying it, {kept}. "
                         "Lower train.lr, or set "
                         "train.on_nonfinite = \"skip\" to skip such steps; resume with --resume latest")


class Interrupted(DdpmKitError):
    """Ctrl-C: a checkpoint of the last finished step was written."""

    exit_code = 130

    def __init__(self, step: int, run: RunFolder) -> None:
        super().__init__(f"interrupted after step {step}; checkpoint saved, continue with "
                         f"`ddpm-kit run {run.recipe_file} --run-dir {run.path} --resume latest`")


def correct_compiled_gradients(compiling: bool):
    """Inductor's layout optimisation (convolutions switched to channels-last inside the graph)
    gives wrong UNet2DModel gradients on CPU in torch 2.13: no gradient flows back through the
    first up block's upsampler, while the loss is exact. Off while compiling a training step; the
    forward alone (sampling) is unaffected. Found with torch._inductor.compiler_bisector; tested in
    tests/test_engine.py::test_compiled_training_equals_the_plain_run."""
    import torch._inductor.config as inductor_config

    return inductor_config.patch(layout_optimization=False) if compiling else nullcontext()
