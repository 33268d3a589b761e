"""The training engine on accelerate, plus sampling and evaluation of a run folder.

One global batch per optimizer step is drawn from a generator seeded by (seed, step, micro-step)
and each process takes its slice, so P processes with batch B/P train exactly like one process
with batch B, and a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import signal
import threading
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import to_model_range, to_uint8, to_uint8_tensor
from .diffusion import GaussianDiffusion
from .errors import DdpmKitError
from .interfaces import Objective, Sampler
from .plugins import Registry
from .recipe import BACKBONE_CONTEXT, Recipe
from .runs import RunFolder, write_manifest


@dataclass
class Components:
    """Everything a recipe names, built."""

    recipe: Recipe
    diffusion: GaussianDiffusion
    objective: Objective
    sampler: Sampler
    registry: Registry
    source: str = "recipe"
    _dataset: Any = None
    _pixels: dict[str, torch.Tensor] = field(default_factory=dict)

    def build_backbone(self) -> torch.nn.Module:
        """The backbone, sized for the data and for the variance's output channels."""
        r = self.recipe
        context = {"in_channels": r.data.channels, "out_channels": self.diffusion.output_channels(r.data.channels),
                   "image_size": r.data.image_size}
        params = dict(r.backbone.params)
        for key in BACKBONE_CONTEXT:
            if key in params and params.pop(key) != context[key]:
                raise DdpmKitError(
                    f"{self.source}: backbone.{key} = {r.backbone.params[key]!r} but the recipe needs {context[key]} "
                    f"(data.channels={r.data.channels}, variance '{self.diffusion.variance.name}'); "
                    "remove the key to size the backbone automatically")
        try:
            return self.registry.build("backbone", r.backbone.name, params, **context)
        except DdpmKitError as exc:
            raise DdpmKitError(f"{self.source}: backbone: {exc}") from None

    def build_dataset(self):
        """The dataset plugin's DatasetDict (built once per Components)."""
        if self._dataset is None:
            r = self.recipe.data
            try:
                self._dataset = self.registry.build("dataset", r.dataset.name, r.dataset.params)
            except DdpmKitError as exc:
                raise DdpmKitError(f"{self.source}: data.dataset: {exc}") from None
        return self._dataset


def build_components(recipe: Recipe, registry: Registry, source: str = "recipe") -> Components:
    """Build the diffusion, objective and sampler; a factory's complaint names ``source`` and the key."""
    def build(key: str, kind: str, component, **context: Any) -> Any:
        try:
            return registry.build(kind, component.name, component.params, **context)
        except DdpmKitError as exc:
            raise DdpmKitError(f"{source}: {key}: {exc}") from None

    d = recipe.diffusion
    diffusion = GaussianDiffusion(
        build("diffusion.schedule", "schedule", d.schedule),
        build("diffusion.parameterization", "parameterization", d.parameterization),
        build("diffusion.variance", "variance", d.variance),
        build("diffusion.decoder", "decoder", d.decoder),
    )
    objective = build("objective", "objective", recipe.objective)
    try:
        objective.check(diffusion)
    except DdpmKitError as exc:
        raise DdpmKitError(f"{source}: objective: {exc}") from None
    sampler = build("sample.sampler", "sampler", recipe.sample.sampler, num_timesteps=diffusion.num_timesteps)
    return Components(recipe, diffusion, objective, sampler, registry, source=source)


def load_split(components: Components, split: str) -> torch.Tensor:
    """A dataset split as uint8 [N, C, H, W], held in memory (prepared once per Components)."""
    if split not in components._pixels:
        r = components.recipe.data
        dataset = components.build_dataset()
        if split not in dataset:
            raise DdpmKitError(f"dataset '{r.dataset.name}' has no '{split}' split; splits: {', '.join(dataset)}")
        components._pixels[split] = to_uint8_tensor(dataset[split], r.image_size, r.channels, r.resize)
    return components._pixels[split]


# -- batches -------------------------------------------------------------------------------------
def step_generator(seed: int, step: int, micro: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 64 + micro)


def global_batch(pixels: torch.Tensor, batch_size: int, generator: torch.Generator, flip: bool) -> torch.Tensor:
    """x0 in [-1, 1] for one global batch (sampled with replacement across epochs)."""
    index = torch.randint(0, len(pixels), (batch_size,), generator=generator)
    x0 = to_model_range(pixels[index])
    if flip:
        mask = torch.rand(batch_size, generator=generator) < 0.5
        x0 = torch.where(mask.view(-1, 1, 1, 1), x0.flip(-1), x0)
    return x0


# -- EMA -----------------------------------------------------------------------------------------
def ema_state_dict(model: torch.nn.Module, ema) -> dict[str, torch.Tensor]:
    """The model's state dict with the EMA's shadow values in place of the parameters."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for (name, _), shadow in zip(model.named_parameters(), ema.shadow_params):
        state[name] = shadow.detach().clone()
    return state


def make_ema(model: torch.nn.Module, decay: float, warmup: bool):
    from diffusers.training_utils import EMAModel

    # min_decay=decay: the paper's constant decay; otherwise diffusers' (1+n)/(10+n) warm-up.
    return EMAModel(model.parameters(), decay=decay, min_decay=0.0 if warmup else decay)


# -- training ------------------------------------------------------------------------------------
def train(components: Components, run: RunFolder, *, resume: bool = False) -> None:
    """Train as the recipe says, checkpointing into ``run``; ``resume`` continues the latest checkpoint."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers.optimization import get_constant_schedule_with_warmup
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    r, tr = components.recipe, components.recipe.train
    tensorboard = importlib.util.find_spec("tensorboard") is not None  # optional: pip install 'ddpm-kit[tensorboard]'
    accelerator = Accelerator(mixed_precision=tr.mixed_precision, step_scheduler_with_optimizer=False,
                              gradient_accumulation_steps=tr.grad_accum, project_dir=str(run.path),
                              log_with="tensorboard" if tensorboard else None,
                              dynamo_backend="inductor" if tr.compile else "no")
    if tr.compile:
        quiet_known_dynamo_warnings()
    if tensorboard:
        accelerator.init_trackers("tensorboard")
    world, rank = accelerator.num_processes, accelerator.process_index
    micro_batch = tr.batch_size // tr.grad_accum
    if tr.batch_size % (tr.grad_accum * world):
        raise DdpmKitError(f"train.batch_size {tr.batch_size} is not divisible by grad_accum x processes "
                           f"({tr.grad_accum} x {world})")
    set_seed(r.run.seed)
    pixels = load_split(components, "train")
    model = components.build_backbone()
    if tr.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = make_ema(model, tr.ema_decay, warmup=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=tr.lr, betas=tr.adam_betas, weight_decay=tr.weight_decay)
    lr_schedule = get_constant_schedule_with_warmup(optimizer, num_warmup_steps=tr.warmup_steps)
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
    bar = tqdm(range(start, tr.steps), initial=start, total=tr.steps, disable=not accelerator.is_main_process,
               desc="train", dynamic_ncols=True)
    loss_sum = torch.zeros((), device=accelerator.device)
    interval_start, interval_steps, skipped = time.perf_counter(), 0, 0
    grad_norm = torch.zeros(())
    first_bad = torch.full((), -1, device=accelerator.device)  # first step with a non-finite gradient
    done = start
    with GracefulStop() as stop, correct_compiled_gradients(tr.compile):
        for step in bar:
            model.train()
            for micro in range(tr.grad_accum):
                g = step_generator(r.run.seed, step, micro)
                x0 = global_batch(pixels, micro_batch, g, r.data.random_flip)
                t, weights = objective.sample_t(diffusion, micro_batch, torch.device("cpu"), g)
                noise = torch.randn(x0.shape, generator=g)
                mine = slice(rank * micro_batch // world, (rank + 1) * micro_batch // world)
                x0, t, weights, noise = (v[mine].to(accelerator.device) for v in (x0, t, weights, noise))
                with accelerator.accumulate(model):
                    losses = diffusion.training_losses(model, x0, objective, t=t, noise=noise, weights=weights,
                                                       update=False)
                    loss = losses["loss"].mean()
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        # the norm of the all-reduced gradient: the same on every process
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), tr.grad_clip or math.inf)
                        if tr.mixed_precision != "fp16":  # fp16: the gradient scaler skips such steps
                            bad = ~torch.isfinite(grad_norm)
                            if tr.on_nonfinite == "skip" and bool(bad):  # skipping needs a host sync
                                optimizer.zero_grad(set_to_none=True)
                                skipped += 1
                                continue
                            # "stop": noted on the device, checked at log and checkpoint steps (no sync)
                            first_bad = torch.where(bad & (first_bad < 0), step + 1, first_bad)
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
            if (checkpoint_due or done % tr.log_every == 0 or done == tr.steps) and int(first_bad) >= 0:
                raise NonFiniteError(int(first_bad), run)
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
            if checkpoint_due:
                save_checkpoint(accelerator, run, done, ema, keep=tr.keep_checkpoints)
            if tr.sample_every and done % tr.sample_every == 0 and accelerator.is_main_process:
                unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
                with ema_weights(unwrapped, ema):
                    images = sample_images(components, unwrapped, 16, accelerator.device)
                run.save_grid(images, run.samples / f"step_{done:07d}.png")
            # Ctrl-C: stop between steps. Several processes agree at log steps (one small all-reduce).
            if world == 1 and stop.requested or world > 1 and done % tr.log_every == 0 and bool(
                    accelerator.reduce(torch.tensor(float(stop.requested), device=accelerator.device), "max")):
                bar.close()
                if not checkpoint_due:
                    save_checkpoint(accelerator, run, done, ema, keep=tr.keep_checkpoints)
                raise Interrupted(done, run)
    bar.close()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
        run.model.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous().cpu() for k, v in unwrapped.state_dict().items()}, run.model / "model.safetensors")
        save_file({k: v.contiguous().cpu() for k, v in ema_state_dict(unwrapped, ema).items()},
                  run.model / "ema.safetensors")
    accelerator.wait_for_everyone()
    accelerator.end_training()


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
        super().__init__(f"non-finite loss or gradient at step {step}; stopped, {kept}. Lower train.lr, or set "
                         "train.on_nonfinite = \"skip\" to skip such steps; resume with --resume latest")


class Interrupted(DdpmKitError):
    """Ctrl-C: a checkpoint of the last finished step was written."""

    exit_code = 130

    def __init__(self, step: int, run: RunFolder) -> None:
        super().__init__(f"interrupted after step {step}; checkpoint saved, continue with "
                         f"`ddpm-kit run {run.recipe_file} --run-dir {run.path} --resume latest`")


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


def save_checkpoint(accelerator, run: RunFolder, step: int, ema, keep: int) -> None:
    """accelerate's full training state, written to a temporary folder and renamed when complete."""
    final = run.checkpoint_dir(step)
    tmp = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        write_manifest(tmp, step)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        run.prune_checkpoints(keep)
    accelerator.wait_for_everyone()


class ema_weights:
    """Context manager: the model temporarily holds the EMA weights."""

    def __init__(self, model: torch.nn.Module, ema) -> None:
        self.model, self.ema = model, ema

    def __enter__(self):
        self.ema.store(self.model.parameters())
        self.ema.copy_to(self.model.parameters())
        return self.model

    def __exit__(self, *exc):
        self.ema.restore(self.model.parameters())


def correct_compiled_gradients(compiling: bool):
    """Inductor's layout optimisation (convolutions switched to channels-last inside the graph)
    gives wrong UNet2DModel gradients on CPU in torch 2.13: no gradient flows back through the
    first up block's upsampler, while the loss is exact. Off while compiling a training step; the
    forward alone (sampling) is unaffected. Found with torch._inductor.compiler_bisector; tested in
    tests/test_engine.py::test_compiled_training_equals_the_plain_run."""
    import torch._inductor.config as inductor_config

    return inductor_config.patch(layout_optimization=False) if compiling else nullcontext()


def quiet_known_dynamo_warnings() -> None:
    """Silence Dynamo's note on diffusers' lru_cache'd torch-version check in its up/downsampling
    blocks (raised on every compile, harmless: the cached value never changes within a process)."""
    warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`", category=UserWarning)


# -- sampling ------------------------------------------------------------------------------------
def autocast_for(device: torch.device, mixed_precision: str):
    if mixed_precision == "no":
        return nullcontext()
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@torch.inference_mode()
def sample_images(components: Components, model: torch.nn.Module, num_images: int, device: torch.device, *,
                  seed: int | None = None, callback=None) -> torch.Tensor:
    """``num_images`` samples as uint8 [N, C, H, W], in batches, deterministic in ``seed``."""
    s, d = components.recipe.sample, components.recipe.data
    seed = s.seed if seed is None else seed
    model.eval()
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if s.compile:
        quiet_known_dynamo_warnings()
        model = torch.compile(model)
    out = []
    for i, start in enumerate(range(0, num_images, s.batch_size)):
        n = min(s.batch_size, num_images - start)
        g = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + i)
        x_T = torch.randn(n, d.channels, d.image_size, d.image_size, generator=g).to(device)
        noise_gen = g if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed * 1_000_003 + i)
        with autocast_for(device, s.mixed_precision):
            x = components.sampler(components.diffusion, model, x_T, generator=noise_gen, callback=callback)
        out.append(to_uint8(x).cpu())
    return torch.cat(out)


def load_run_model(components: Components, run: RunFolder, *, use_ema: bool, device: torch.device) -> torch.nn.Module:
    """The run's backbone with its final (or latest checkpoint's) weights."""
    from safetensors.torch import load_file

    model = components.build_backbone()
    weights = run.model / ("ema.safetensors" if use_ema else "model.safetensors")
    if not weights.is_file():
        raise DdpmKitError(f"{run.path}: no trained weights at {weights}; finish training with "
                           f"`ddpm-kit run {run.path / 'recipe.toml'} --resume latest`")
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise DdpmKitError(f"{weights}: cannot read weights ({exc})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DdpmKitError(f"{weights}: weights do not fit the recipe's backbone "
                           f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)")
    return model.to(device).eval()


# -- evaluation ----------------------------------------------------------------------------------
@dataclass
class EvalContext:
    """What a Metric gets: the trained model, the diffusion, data access and a place for files."""

    components: Components
    model: torch.nn.Module
    device: torch.device
    run: RunFolder
    seed: int = 0

    @property
    def diffusion(self) -> GaussianDiffusion:
        return self.components.diffusion

    def images(self, split: str = "test", limit: int | None = None) -> torch.Tensor:
        """Data in [-1, 1], the first ``limit`` images of a split."""
        pixels = load_split(self.components, split)
        return to_model_range(pixels[:limit] if limit else pixels)

    def labelled(self, split: str, label_column: str = "label") -> tuple[torch.Tensor, torch.Tensor]:
        """A split's images in [-1, 1] and its integer labels."""
        dataset = self.components.build_dataset()[split]
        if label_column not in dataset.column_names:
            raise DdpmKitError(f"dataset '{self.components.recipe.data.dataset.name}' has no label column "
                               f"'{label_column}' (columns: {', '.join(dataset.column_names)}); the 'fid' metric "
                               "trains its feature network on labels")
        return self.images(split), torch.tensor(dataset[label_column], dtype=torch.long)

    def data_key(self) -> dict[str, Any]:
        """What identifies the data as a feature network sees it (for caching)."""
        return self.components.recipe.model_dump(mode="json", include={"data"})

    def samples(self, n: int) -> torch.Tensor:
        """``n`` samples in [-1, 1]: the run's final samples if there are enough, else drawn now."""
        final = self.run.samples / "final.npz"
        if final.is_file():
            images = torch.from_numpy(np.load(final)["images"])
            if len(images) >= n:
                return to_model_range(images[:n])
        cached = self.run.samples / f"eval_{n}.npz"
        if cached.is_file():
            return to_model_range(torch.from_numpy(np.load(cached)["images"]))
        images = sample_images(self.components, self.model, n, self.device, seed=self.seed + 1)
        self.run.save_samples(images, f"eval_{n}")
        return to_model_range(images)

    def save_array(self, name: str, array: np.ndarray) -> Path:
        path = self.run.eval / f"{name}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, array)
        return path


def evaluate(components: Components, run: RunFolder, device: torch.device, *, use_ema: bool | None = None,
             overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, float]:
    """Compute every metric the recipe lists; results go to eval/metrics.json."""
    use_ema = components.recipe.eval.use_ema if use_ema is None else use_ema
    model = load_run_model(components, run, use_ema=use_ema, device=device)
    run.eval.mkdir(parents=True, exist_ok=True)
    context = EvalContext(components, model, device, run, seed=components.recipe.run.seed)
    results: dict[str, float] = {}
    for spec in components.recipe.eval.metrics:
        params = {**spec.params, **(overrides or {}).get(spec.name, {})}
        metric = components.registry.build("metric", spec.name, params)
        with torch.inference_mode():
            results.update(metric.compute(context))
    results["weights"] = "ema" if use_ema else "raw"
    run.eval.mkdir(parents=True, exist_ok=True)
    (run.eval / "metrics.json").write_text(json.dumps(results, indent=2))
    return results
