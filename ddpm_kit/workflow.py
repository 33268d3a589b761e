"""What the commands do: run a recipe end to end, sample from a run, evaluate a run.

Every command runs on all processes a launcher started (torchrun, accelerate launch): training
splits each batch, sampling and evaluation split their batches, and the main process writes.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import click
import numpy as np
import torch

from .data import to_uint8
from .engine.monitoring import trackers
from .engine import Components, build_components, describe, evaluate, load_run_model, process_state, sample_images, train
from .engine.data import load_labels
from .engine.sampling import sample_labels
from .errors import DdpmKitError
from .plugins import Registry
from .recipe import Component, load_recipe, read_toml, validate_recipe
from .runs import RunFolder

# Keys that may change when a run is resumed (e.g. to train longer); the rest must match.
RESUMABLE_CHANGES = {("train", "steps"), ("sample",), ("eval",), ("data", "store"), ("data", "store_dir"),
                     ("data", "workers")}


def _first_difference(a, b, path=()) -> tuple[str, ...] | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            here = (*path, key)
            if any(here[: len(p)] == p for p in RESUMABLE_CHANGES):
                continue
            diff = _first_difference(a.get(key), b.get(key), here)
            if diff:
                return diff
        return None
    return None if a == b else path


def run_recipe(registry: Registry, recipe_file: Path, overrides: list[str], *, resume: bool, overwrite: bool,
               run_dir: Path | None, do_sample: bool, do_evaluate: bool) -> RunFolder:
    """Validate, prepare the run folder, train, then sample and evaluate (on all processes)."""
    recipe, resolved = load_recipe(recipe_file, registry, overrides)
    run = RunFolder(run_dir or Path(recipe.run.output_dir) / (recipe.run.name or recipe_file.stem))
    components = build_components(recipe, registry, str(recipe_file))
    components.build_backbone()  # fail on a bad backbone, missing data or a missing tracker before
    components.build_dataset()   # touching the run folder
    load_labels(components, "train")  # a conditional run's label column: present, integer, in range
    trackers(recipe.train.log_with)
    state = process_state()
    exists = run.recipe_file.is_file()
    if exists and resume:
        saved = read_toml(run.recipe_file)
        diff = _first_difference(saved, resolved)
        if diff:
            raise DdpmKitError(f"{recipe_file}: key '{'.'.join(diff)}' differs from the run's {run.recipe_file}; "
                               "resume with the same recipe, or start a new run with --overwrite / --run-dir")
    elif exists and not overwrite:
        raise DdpmKitError(f"{run.path} already holds a run; use --resume latest to continue it, --overwrite to "
                           "replace it, or --run-dir for a new folder")
    state.wait_for_everyone()
    if state.is_main_process:
        if exists and overwrite and not resume:
            shutil.rmtree(run.path)
        run.write_recipe(resolved)
    state.wait_for_everyone()
    started = time.time()
    train(components, run, resume=resume)
    if state.is_main_process:
        run.add_to_summary(train_seconds=time.time() - started)
        run.set_in_summary(train_processes=describe(state))
        click.echo(f"trained {recipe.train.steps} steps in {time.time() - started:.0f} s on "
                   f"{state.num_processes} process(es) -> {run.path}")
    if do_sample:
        _sample(components, run, recipe.sample.num_images, None, "final", recipe.sample.use_ema, state, state.device)
    if do_evaluate:
        _evaluate(components, run, state, state.device)
    state.wait_for_everyone()
    return run


def _evaluate(components: Components, run: RunFolder, state, device: torch.device, **kwargs) -> dict:
    started = time.time()
    results = evaluate(components, run, device, state=state, **kwargs)
    if state.is_main_process:
        _report(results)
        run.add_to_summary(eval_seconds=time.time() - started)
        run.set_in_summary(eval_processes=describe(state))
    return results



def _report(results: dict) -> None:
    for key, value in results.items():
        click.echo(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")


def _sample(components: Components, run: RunFolder, n: int, seed: int | None, name: str, use_ema: bool,
            state, device: torch.device, progressive: int = 8) -> None:
    """Samples to samples/<name>.png/.npz, plus x0-hat along the chain of the first images (Fig. 6);
    all processes sample, the main process writes."""
    model = load_run_model(components, run, use_ema=use_ema, device=device)
    keep: set[int] = set()
    snapshots: dict[int, torch.Tensor] = {}

    def record(step: dict) -> None:
        if not keep:  # the first step's index tells how many steps this sampler takes
            keep.update(int(round(v)) for v in np.linspace(step["i"], 0, 10))
        if step["i"] in keep and step["i"] not in snapshots:
            snapshots[step["i"]] = to_uint8(step["x0_hat"][:progressive]).cpu()

    started = time.time()
    images = sample_images(components, model, n, device, seed=seed, callback=record, state=state)
    if not state.is_main_process:
        return
    grid, array = run.save_samples(images, name, sample_labels(components, n))
    chain = torch.stack([snapshots[i] for i in sorted(snapshots, reverse=True)], dim=1)  # [k, steps, C, H, W]
    progressive_grid = run.save_grid(chain.flatten(0, 1), run.samples / f"{name}_progressive.png", cols=chain.shape[1])
    click.echo(f"sampled {n} images in {time.time() - started:.0f} s -> {grid}, {array}, {progressive_grid}")
    run.add_to_summary(sample_seconds=time.time() - started)
    run.set_in_summary(sample_processes=describe(state))


def load_run(registry: Registry, run_dir: Path, sampler: str | None = None, steps: int | None = None,
             classes: list[int] | None = None, guidance_scale: float | None = None) -> tuple[Components, RunFolder]:
    """A finished run's components; ``sampler`` / ``steps`` replace the recipe's sampler for this
    call, ``classes`` / ``guidance_scale`` what a conditional run draws."""
    run = RunFolder.existing(run_dir)
    data = read_toml(run.recipe_file)
    table = data.setdefault("sample", {})
    if sampler:
        table["sampler"] = {"name": sampler}
    if steps is not None:
        table.setdefault("sampler", {"name": "ancestral"})["steps"] = steps
    if classes:
        table["classes"] = classes
    if guidance_scale is not None:
        table["guidance_scale"] = guidance_scale
    recipe = validate_recipe(data, registry, str(run.recipe_file))
    return build_components(recipe, registry, str(run.recipe_file)), run


def sample_run(registry: Registry, run_dir: Path, *, num_images: int | None, seed: int | None, sampler: str | None,
               name: str, use_ema: bool, device: str | None, steps: int | None = None,
               classes: list[int] | None = None, guidance_scale: float | None = None) -> None:
    components, run = load_run(registry, run_dir, sampler, steps, classes, guidance_scale)
    state = process_state()
    _sample(components, run, num_images or components.recipe.sample.num_images, seed, name, use_ema, state,
            device_for(state, device))


def evaluate_run(registry: Registry, run_dir: Path, *, limit: int | None, use_ema: bool | None, device: str | None,
                 metric: str | None = None, num_samples: int | None = None, sampler: str | None = None,
                 steps: int | None = None, guidance_scale: float | None = None) -> dict:
    """All the recipe's metrics (eval/metrics.json), or one ``metric`` (eval/<metric>[_<tag>].json)
    with its samples drawn by ``sampler`` / ``steps`` / ``guidance_scale`` when given."""
    if num_samples is not None and metric is None:
        raise DdpmKitError("--num-samples needs --metric (the metric that draws the samples, e.g. --metric fid)")
    components, run = load_run(registry, run_dir, sampler, steps, guidance_scale=guidance_scale)
    overrides = {"bpd": {"limit": limit}} if limit else {}
    if metric is not None:
        specs = components.recipe.eval.metrics
        chosen = next((m for m in specs if m.name == metric), None) or Component(name=metric)
        components.recipe.eval.metrics = [chosen]
        if num_samples is not None:
            overrides.setdefault(metric, {})["num_samples"] = num_samples
    tag = None
    if sampler or steps:
        s = components.recipe.sample.sampler
        tag = f"{s.name}-{s.params['steps']}" if "steps" in s.params else s.name
    if guidance_scale is not None:
        tag = "_".join(filter(None, [tag, f"w{guidance_scale:g}"]))
    state = process_state()
    return _evaluate(components, run, state, device_for(state, device), use_ema=use_ema, overrides=overrides,
                     sample_tag=tag, only=metric)


def device_for(state, device: str | None) -> torch.device:
    """``--device`` for one process, else the device accelerate gave this process."""
    if device is None:
        return state.device
    if state.num_processes > 1:
        raise DdpmKitError(f"--device {device} is for one process; under a launcher each process uses its own device")
    return torch.device(device)



def sweep(registry: Registry, recipe_files: list[Path], overrides: list[str], report_dir: Path,
          doc: Path | None = None) -> Path:
    """Run every recipe (finished runs are kept, interrupted ones resumed), then one report.

    With ``doc``, the report's table replaces the block between ``<!-- sweep:begin -->`` and
    ``<!-- sweep:end -->`` in that markdown file, so published tables come from the command.
    """
    from .report import write_report

    runs = []
    for file in recipe_files:
        recipe, _ = load_recipe(file, registry, overrides)
        run = RunFolder(Path(recipe.run.output_dir) / (recipe.run.name or file.stem))
        runs.append(run.path)
        if (run.eval / "metrics.json").is_file():
            click.echo(f"[sweep] {file}: finished earlier, kept ({run.path})")
            continue
        click.echo(f"[sweep] {file} -> {run.path}")
        run_recipe(registry, file, overrides, resume=run.recipe_file.is_file(), overwrite=False, run_dir=run.path,
                   do_sample=True, do_evaluate=True)
    table, page = write_report(runs, report_dir)
    if doc is not None:
        _replace_block(doc, table.read_text())
    click.echo(table.read_text(), nl=False)
    click.echo(f"wrote {table} and {page}")
    return table


def _replace_block(doc: Path, text: str) -> None:
    begin, end = "<!-- sweep:begin -->", "<!-- sweep:end -->"
    content = doc.read_text()
    if begin not in content or end not in content:
        raise DdpmKitError(f"{doc}: has no '{begin}' ... '{end}' block for the sweep's table")
    head, rest = content.split(begin, 1)
    doc.write_text(f"{head}{begin}\n{text}{end}{rest.split(end, 1)[1]}")
