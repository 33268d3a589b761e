"""What the commands do: run a recipe end to end, sample from a run, evaluate a run.

Every command runs on all processes a launcher started (torchrun, accelerate launch): training
splits each batch, sampling and evaluation split their batches, and the main process writes.
"""

from __future__ import annotations

from pathlib import Path

import click
import torch

from . import provenance
from .engine import Components, Trainer, build_components, evaluate, process_state, sample_run
from .engine.sampling import SamplingOverride
from .errors import DdpmKitError, PluginError
from .plugins import Registry
from .recipe import Component, load_recipe, parse_override, read_toml, shadowing_notes, validate_recipe
from .runs import RunFolder

# Keys that may change when a run is resumed (e.g. to train longer); the rest must match.
RESUMABLE_CHANGES = {("train", "steps"), ("sample",), ("eval",), ("data", "store"), ("data", "store_dir"),
                     ("data", "workers")}


def _first_difference(a, b, path=()) -> tuple[str, ...] | None:
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return None if a == b else path
    for key in sorted(set(a) | set(b)):
        here = (*path, key)
        resumable = any(here[: len(p)] == p for p in RESUMABLE_CHANGES)
        if not resumable and (diff := _first_difference(a.get(key), b.get(key), here)):
            return diff
    return None


def run_recipe(registry: Registry, recipe_file: Path, overrides: list[str], *, resume: bool, overwrite: bool,
               run_dir: Path | None, do_sample: bool, do_evaluate: bool) -> None:
    """Validate, set up training, prepare the run folder, train, then sample and evaluate (on all
    processes). Everything that can reject the input is built before the run folder is touched,
    and training uses those very objects."""
    recipe, resolved = load_recipe(recipe_file, registry, overrides)
    run = RunFolder(run_dir or Path(recipe.run.output_dir) / (recipe.run.name or recipe_file.stem))
    components = build_components(recipe, registry, str(recipe_file))
    state = process_state()
    trainer = Trainer(components, run)
    prepare_run_folder(run, resolved, recipe_file, resume=resume, overwrite=overwrite, state=state)
    for note in shadowing_notes(recipe, registry) if state.is_main_process else ():
        click.echo(f"note: {recipe_file}: {note}", err=True)
    provenance.record(run, "resume" if resume else "run", registry, recipe, state)
    trainer.fit(resume=resume)
    try:
        if do_sample:
            sample_run(components, run, recipe.sample.num_images, state.device, use_ema=recipe.sample.use_ema,
                       state=state)
        if do_evaluate:
            evaluate(components, run, state.device, state=state)
    except PluginError as exc:  # training is done: say how to finish without training again
        raise PluginError(f"{exc}; training finished and {run.model} holds its weights: finish with `ddpm-kit sample "
                          f"{run.path}` / `ddpm-kit evaluate {run.path}` (--sampler for another), or `ddpm-kit run "
                          f"{recipe_file} --run-dir {run.path} --resume latest`") from exc
    state.wait_for_everyone()


def prepare_run_folder(run: RunFolder, resolved: dict, recipe_file: Path, *, resume: bool, overwrite: bool,
                       state) -> None:
    """Refuse to touch an existing run unless asked to (``resume`` needs the same recipe up to
    ``RESUMABLE_CHANGES``), clear it for ``overwrite``, and write the resolved recipe."""
    exists = run.recipe_file.is_file()
    if exists and resume and (diff := _first_difference(read_toml(run.recipe_file), resolved)):
        raise DdpmKitError(f"{recipe_file}: key '{'.'.join(diff)}' differs from the run's {run.recipe_file}; "
                           "resume with the same recipe, or start a new run with --overwrite / --run-dir")
    if exists and not (resume or overwrite):
        raise DdpmKitError(f"{run.path} already holds a run; use --resume latest to continue it, --overwrite to "
                           "replace it, or --run-dir for a new folder")
    state.wait_for_everyone()
    if state.is_main_process:
        if exists and overwrite and not resume:
            run.remove()
        run.write_recipe(resolved)
    state.wait_for_everyone()


def load_run(registry: Registry, run_dir: Path,
             override: SamplingOverride = SamplingOverride()) -> tuple[Components, RunFolder]:
    """A finished run's components, its recipe changed for this call by ``override``."""
    run = RunFolder.existing(run_dir)
    source = str(run.recipe_file)
    recipe = override.apply(validate_recipe(read_toml(run.recipe_file), registry, source), registry, source)
    return build_components(recipe, registry, source, run_dir=run.path), run


def sample_from_run(registry: Registry, run_dir: Path, *, num_images: int | None, seed: int | None,
                    name: str | None, use_ema: bool, device: str | None,
                    override: SamplingOverride = SamplingOverride()) -> None:
    """``ddpm-kit sample``: samples/<name>.png/.npz from a finished run (by default final, or
    final_<tag> when ``override`` changes the sampler or the guidance)."""
    components, run = load_run(registry, run_dir, override)
    name = name or run.sample_name(override.tag(components.recipe))
    state = process_state()
    provenance.record(run, "sample", registry, components.recipe, state, writes=run.samples_file(name).name)
    sample_run(components, run, num_images or components.recipe.sample.num_images, device_for(state, device),
               name=name, seed=seed, use_ema=use_ema, state=state)


def evaluate_run(registry: Registry, run_dir: Path, *, limit: int | None, use_ema: bool | None, device: str | None,
                 metric: str | None = None, num_samples: int | None = None, params: list[str] = (),
                 override: SamplingOverride = SamplingOverride()) -> dict:
    """All the recipe's metrics (eval/metrics.json), or one ``metric`` (eval/<metric>[_<tag>].json)
    with its samples drawn as ``override`` says and its ``params`` (KEY=VALUE, TOML values) set."""
    if num_samples is not None and metric is None:
        raise DdpmKitError("--num-samples needs --metric (the metric that draws the samples, e.g. --metric fid)")
    if params and metric is None:
        raise DdpmKitError("--param needs --metric (the metric whose parameter it sets, e.g. --metric bpd --param limit=64)")
    components, run = load_run(registry, run_dir, override)
    takes_limit = {name for name in {"bpd", metric} - {None}
                   if name in registry.providers["metric"] and registry.resolve("metric", name).takes("limit")}
    overrides = {name: {"limit": limit} for name in takes_limit} if limit else {}
    metrics, only = None, metric
    if metric is not None:
        metrics = [next((m for m in components.recipe.eval.metrics if m.name == metric), None) or Component(name=metric)]
        if num_samples is not None:
            overrides.setdefault(metric, {})["num_samples"] = num_samples
        for text in params:
            key, value = parse_override(text, flag="--param", example="steps=50")
            overrides.setdefault(metric, {})[".".join(key)] = value
            only = f"{only}_{'.'.join(key)}{value}"
    state = process_state()
    tag = override.tag(components.recipe)
    provenance.record(run, "evaluate", registry, components.recipe, state,
                      writes=run.results_file(only, None if only is None else tag).name)
    return evaluate(components, run, device_for(state, device), use_ema=use_ema, metrics=metrics, overrides=overrides,
                    state=state, sample_tag=tag, only=only)


def device_for(state, device: str | None) -> torch.device:
    """``--device`` for one process, else the device accelerate gave this process."""
    if device is None:
        return state.device
    if state.num_processes > 1:
        raise DdpmKitError(f"--device {device} is for one process; under a launcher each process uses its own device")
    return torch.device(device)


def sweep(registry: Registry, recipe_files: list[Path], overrides: list[str], report_dir: Path,
          doc: Path | None = None, pairs: list[tuple[str, str]] = ()) -> None:
    """Run every recipe (finished runs are kept, interrupted ones resumed), then one report; with
    ``doc``, its table replaces the file's sweep block. ``pairs`` are checked before any recipe runs."""
    from .report import check_pairs, write_report

    runs = []
    for file in recipe_files:
        recipe, _ = load_recipe(file, registry, overrides)
        runs.append(RunFolder(Path(recipe.run.output_dir) / (recipe.run.name or file.stem)))
    check_pairs(pairs, [run.path.name for run in runs])
    for file, run in zip(recipe_files, runs):
        if run.results_file().is_file():
            click.echo(f"[sweep] {file}: finished earlier, kept ({run.path})")
            continue
        click.echo(f"[sweep] {file} -> {run.path}")
        run_recipe(registry, file, overrides, resume=run.recipe_file.is_file(), overwrite=False, run_dir=run.path,
                   do_sample=True, do_evaluate=True)
    table, page = write_report([run.path for run in runs], report_dir, pairs)
    if doc is not None:
        begin, end = "<!-- sweep:begin -->", "<!-- sweep:end -->"
        content = doc.read_text()
        if begin not in content or end not in content:
            raise DdpmKitError(f"{doc}: has no '{begin}' ... '{end}' block for the sweep's table")
        head, rest = content.split(begin, 1)
        doc.write_text(f"{head}{begin}\n{table.read_text()}{end}{rest.split(end, 1)[1]}")
    click.echo(table.read_text(), nl=False)
    click.echo(f"wrote {table} and {page}")
