"""The ``ddpm-kit`` command line. Plugins add commands through ``register_commands(cli)``."""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import click

from . import __version__
from .errors import DdpmKitError, PluginError
from .plugins import Registry
from .plugins.loading import call_each, get_plugin_manager


def get_registry_from(ctx: click.Context) -> Registry:
    """The registry for this invocation (built once, honouring --strict-plugins)."""
    obj = ctx.find_root().obj
    if "registry" not in obj:
        strict = obj.get("strict_plugins", False)
        plugins = obj.get("plugins") or get_plugin_manager(strict=strict)
        if strict and plugins.failures:
            raise DdpmKitError(f"{plugins.failures[0]} (strict plugin mode)")
        obj["registry"] = Registry(plugins, strict=strict)
    return obj["registry"]


@click.group()
@click.version_option(__version__, prog_name="ddpm-kit")
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.option("--strict-plugins", is_flag=True, help="Make a broken plugin a fatal error.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, strict_plugins: bool) -> None:
    """ddpm-kit: Denoising Diffusion Probabilistic Models, every ablation a recipe."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["strict_plugins"] = strict_plugins


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--details", "details", metavar="NAME", help="Every component called NAME (or plugin:NAME): its "
              "parameters with types and defaults, and its docstring's first line.")
@click.pass_context
def plugins_command(ctx: click.Context, as_json: bool, details: str | None) -> None:
    """List every component: kind, name, providing plugin, version, status (ok, shadowed by a
    built-in of the same name, conflict between two plugins, broken)."""
    registry = get_registry_from(ctx)
    if details is not None:
        entries = registry.details(details)
        click.echo(json.dumps(entries, indent=2) if as_json else "\n\n".join(map(format_details, entries)))
        return
    rows = registry.rows()
    providers = [p for by_name in registry.providers.values() for ps in by_name.values() for p in ps]
    shadowed = dict.fromkeys(p for p in providers if registry.status(p) == "shadowed")
    conflicts = {(p.kind, p.name): p for p in providers if registry.status(p) == "conflict"}
    for provider in [*shadowed, *conflicts.values()]:
        click.echo(f"note: {registry.explain(provider)}", err=True)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    cols = ["kind", "name", "plugin", "distribution", "version", "status"]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols[:-1]}
    for r in [{c: c.upper() for c in cols}, *rows]:
        click.echo("  ".join(r[c].ljust(widths.get(c, 0)) for c in cols).rstrip())


def format_details(entry: dict) -> str:
    """One component's reference entry as text (``ddpm-kit plugins --details``)."""
    lines = [f"{entry['kind']} '{entry['name']}' ({entry['plugin']}, {entry['distribution']} {entry['version']})",
             f"  {entry['doc'] or '(no docstring)'}"]
    for p in entry["parameters"]:
        value = "required" if p.get("required") else f"default {json.dumps(p['default'])}"
        lines.append(f"  {p['name']}: {p['type']} ({value})")
    if more := entry["more_parameters"]:
        lines.append(f"  also: {more if isinstance(more, str) else ', '.join(more)}")
    if entry["engine_supplies"]:
        lines.append(f"  supplied by the engine: {', '.join(entry['engine_supplies'])}")
    return "\n".join(lines)


sampler_param_option = click.option(
    "--sampler-param", "sampler_params", multiple=True, metavar="KEY=VALUE",
    help="Set one of the sampler's parameters, e.g. --sampler respaced --sampler-param variance=fixed_beta_tilde "
         "(repeatable; `ddpm-kit plugins --details NAME` lists them).")
steps_option = click.option("--steps", type=int, help="Sampling steps, for samplers with a 'steps' parameter "
                            "(respaced, ddim, diffusers-*, ...; `ddpm-kit plugins --details NAME` lists a sampler's).")
raw_option = click.option("--raw", is_flag=True, help="Use the raw weights instead of the EMA weights.")
device_option = click.option("--device", help="torch device for one process (default: accelerate's: the GPU if "
                             "there is one).")
RECIPE_FILE = click.Path(dir_okay=False, path_type=Path)
RUN_DIR = click.Path(file_okay=False, path_type=Path)
set_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="Override a recipe key, e.g. --set train.steps=200 (repeatable).")


@cli.group()
def recipe() -> None:
    """Work with recipe files."""


@recipe.command("check")
@click.argument("files", nargs=-1, required=True, type=RECIPE_FILE)
@set_option
@click.pass_context
def recipe_check(ctx: click.Context, files: tuple[Path, ...], overrides: tuple[str, ...]) -> None:
    """Validate recipe FILES without training: keys, plugin names and parameters, and everything
    `run` builds before its first step (diffusion, objective, sampler, the backbone on the meta
    device, which allocates no memory, and the dataset plugin's own check; data are loaded only for
    a conditional recipe, to check its label column)."""
    import torch

    from .engine import build_components
    from .recipe import load_recipe, shadowing_notes

    registry = get_registry_from(ctx)
    for file in files:
        r, _ = load_recipe(file, registry, overrides)
        for note in shadowing_notes(r, registry):
            click.echo(f"note: {file}: {note}", err=True)
        components = build_components(r, registry, str(file))
        components.data.validate()
        components.data.labels("train")  # conditional recipes: loads the data to check the label column
        with torch.device("meta"):
            parameters = sum(p.numel() for p in components.build_backbone().parameters())
        chosen, c = r.diffusion, r.conditioning
        classes = "" if c is None else f"{c.num_classes} classes ('{c.label}', dropout {c.label_dropout}), "
        click.echo(f"ok: {file} ({r.data.dataset.name} {r.data.image_size}px, {classes}{r.backbone.name} "
                   f"{parameters / 1e6:.1f}M parameters, {chosen.parameterization.name}/{chosen.variance.name}/"
                   f"{r.objective.name}, T={chosen.schedule.params.get('T', 1000)}, {r.train.steps} steps)")


@cli.command()
@click.argument("recipe_file", type=RECIPE_FILE)
@set_option
@click.option("--resume", type=click.Choice(["latest"]), help="Continue the run from its latest checkpoint.")
@click.option("--overwrite", is_flag=True, help="Delete an existing run folder of the same name first.")
@click.option("--run-dir", type=RUN_DIR, help="Run folder (default: <run.output_dir>/<run.name or file stem>).")
@click.option("--no-sample", is_flag=True, help="Skip the final sample grid.")
@click.option("--no-eval", is_flag=True, help="Skip the final evaluation.")
@click.pass_context
def run(ctx: click.Context, recipe_file: Path, overrides: tuple[str, ...], resume: str | None, overwrite: bool,
        run_dir: Path | None, no_sample: bool, no_eval: bool) -> None:
    """Train, sample and evaluate RECIPE_FILE into one run folder."""
    from .workflow import run_recipe

    run_recipe(get_registry_from(ctx), recipe_file, list(overrides), resume=resume is not None,
               overwrite=overwrite, run_dir=run_dir, do_sample=not no_sample, do_evaluate=not no_eval)


class ClassLabel(click.ParamType):
    """A class index, or 'none' for no label (-1)."""

    name = "class"

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            return value
        if str(value).lower() == "none":
            return -1
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is not a class index (0, 1, ...) or 'none'", param, ctx)


@cli.command()
@click.argument("run_dir", type=RUN_DIR)
@click.option("-n", "--num-images", type=int, help="How many images (default: the recipe's sample.num_images).")
@click.option("--seed", type=int, help="Sampling seed (default: the recipe's sample.seed).")
@click.option("--sampler", help="Sampler plugin name (default: the recipe's); `ddpm-kit plugins` lists them.")
@steps_option
@sampler_param_option
@click.option("--name", help="File name for the grid and array (default: final; final_<sampler>[-<steps>] when "
              "--sampler, --steps or --guidance-scale change the recipe's, so the run's own samples stay).")
@click.option("--class", "classes", type=ClassLabel(), multiple=True,
              help="Conditional runs: the class to draw (repeat for several, one grid row each; 'none': no "
                   "label). Default: the recipe's sample.classes, else every class.")
@click.option("--guidance-scale", type=click.FloatRange(min=0), help="Conditional runs: classifier-free guidance "
              "w in (1 + w) eps(x, y) - w eps(x); 0 is the conditional model (default: sample.guidance_scale).")
@raw_option
@device_option
@click.pass_context
def sample(ctx: click.Context, run_dir: Path, num_images: int | None, seed: int | None, sampler: str | None,
           steps: int | None, sampler_params: tuple[str, ...], name: str | None, classes: tuple[int, ...],
           guidance_scale: float | None, raw: bool, device: str | None) -> None:
    """Draw samples from a trained run: samples/<name>.png and samples/<name>.npz."""
    from .engine.sampling import SamplingOverride
    from .workflow import sample_from_run

    sample_from_run(get_registry_from(ctx), run_dir, num_images=num_images, seed=seed, name=name, use_ema=not raw,
                    device=device, override=SamplingOverride(sampler, steps, classes, guidance_scale, sampler_params))


@cli.command()
@click.argument("run_dir", type=RUN_DIR)
@click.option("--limit", type=int, help="Evaluate bits/dim (and the --metric, if it takes a limit) on the first N test images only.")
@click.option("--metric", help="Compute this one metric (its recipe settings, else its defaults): eval/<metric>.json.")
@click.option("--num-samples", type=int, help="With --metric: how many samples it draws (fid, fid_inception).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="With --metric: set one of its parameters, e.g. --metric bpd_analytic --param steps=50 (repeatable).")
@click.option("--sampler", help="Draw the metric's samples with this sampler instead of the recipe's.")
@steps_option
@sampler_param_option
@click.option("--guidance-scale", type=click.FloatRange(min=0), help="Conditional runs: draw the metric's samples "
              "with this classifier-free guidance w (eval/<metric>_w<w>.json).")
@raw_option
@device_option
@click.pass_context
def evaluate(ctx: click.Context, run_dir: Path, limit: int | None, metric: str | None, num_samples: int | None,
             params: tuple[str, ...], sampler: str | None, steps: int | None, sampler_params: tuple[str, ...],
             guidance_scale: float | None, raw: bool, device: str | None) -> None:
    """Compute the recipe's metrics (bits/dim at least) for a trained run: eval/metrics.json; or one
    metric, e.g. `--metric fid --num-samples 1000 --sampler diffusers-unipc --steps 20`."""
    from .engine.sampling import SamplingOverride
    from .workflow import evaluate_run

    evaluate_run(get_registry_from(ctx), run_dir, limit=limit, use_ema=False if raw else None, device=device,
                 metric=metric, num_samples=num_samples, params=list(params),
                 override=SamplingOverride(sampler, steps, guidance_scale=guidance_scale, params=sampler_params))


class RunPair(click.ParamType):
    """B:A, two run folder names: the report adds B's paired differences from A."""

    name = "B:A"

    def convert(self, value, param, ctx) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        b, colon, a = str(value).partition(":")
        if not (b and colon and a) or ":" in a or a == b:
            self.fail(f"{value!r} is not two different run names B:A (B minus A), e.g. "
                      "mu_mse_fixed_beta:mu_vlb_fixed_beta", param, ctx)
        return b, a


pair_option = click.option("--pair", "pairs", multiple=True, type=RunPair(),
                           help="Also pair run B with run A (their folder names): the paired bits/dim and FID "
                                "differences B minus A, beside each run's default baseline (the first run it "
                                "can be paired with). Repeatable.")


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=RUN_DIR)
@click.option("--out", type=RUN_DIR, default=Path("report"), show_default=True, help="Folder for report.md/html.")
@pair_option
def report(run_dirs: tuple[Path, ...], out: Path, pairs: tuple[tuple[str, str], ...]) -> None:
    """One markdown table and an HTML page with grids and plots for RUN_DIRS."""
    from .report import write_report

    md, page = write_report(list(run_dirs), out, list(pairs))
    click.echo(md.read_text(), nl=False)
    click.echo(f"wrote {md} and {page}")


@cli.command("sweep")
@click.argument("recipe_files", nargs=-1, required=True, type=RECIPE_FILE)
@set_option
@click.option("--report-dir", type=RUN_DIR, default=Path("report"), show_default=True)
@click.option("--doc", type=click.Path(dir_okay=False, path_type=Path),
              help="Markdown file whose <!-- sweep:begin/end --> block receives the table.")
@pair_option
@click.pass_context
def sweep_command(ctx: click.Context, recipe_files: tuple[Path, ...], overrides: tuple[str, ...], report_dir: Path,
                  doc: Path | None, pairs: tuple[tuple[str, str], ...]) -> None:
    """Run RECIPE_FILES one after another (resuming unfinished ones) and report them together."""
    from .workflow import sweep

    sweep(get_registry_from(ctx), list(recipe_files), list(overrides), report_dir, doc, list(pairs))


@cli.command("export")
@click.argument("run_dir", type=RUN_DIR)
@click.argument("out", type=RUN_DIR)
@click.option("--format", "fmt", type=click.Choice(["diffusers"]), default="diffusers", show_default=True)
@click.option("--raw", is_flag=True, help="Export the raw weights instead of the EMA weights.")
@click.pass_context
def export_command(ctx: click.Context, run_dir: Path, out: Path, fmt: str, raw: bool) -> None:
    """Write RUN_DIR as a diffusers DDPMPipeline folder OUT (unet/, scheduler/, model card)."""
    from .export import export_diffusers
    from .workflow import load_run

    components, run = load_run(get_registry_from(ctx), run_dir)
    notes = export_diffusers(components, run, out, use_ema=not raw)
    click.echo(f"exported {run_dir} -> {out} (DDPMPipeline.from_pretrained('{out}'))")
    for note in notes:
        click.echo(f"note: {note}")


def entry() -> None:
    """``ddpm-kit`` as a process of its own: the console script, ``python -m ddpm_kit`` and the
    workers that torchrun and accelerate launch start (``main`` is the in-process form).

    Python's default collects garbage every 700 new objects, and each full collection walks every
    object alive: importing torch and diffusers (about 450,000 objects) then spends about 0.8 s in
    collections, and at exit the interpreter's final collection walks them all once more (about
    1 s), to free memory the operating system takes back anyway. A process of its own collects every
    10,000 new objects and, when the command ends, freezes what is alive (``gc.freeze``: the final
    collection skips it; ``atexit`` handlers still run): each command starts and ends about 1.8 s
    sooner on a 2-core machine (docs/performance.md)."""
    gc.set_threshold(10_000)
    try:
        main()
    finally:
        gc.freeze()


def main(argv: list[str] | None = None) -> None:
    """The command line in this process: user errors print one line and exit 2; --debug shows the
    traceback."""
    try:
        _main(argv)
    finally:
        # Tear a multi-process command's process group down before the interpreter exits: left to
        # exit, gloo's threads can abort it ('terminate called without an active exception', SIGABRT).
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _main(argv: list[str] | None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        # Plugins are loaded once and add their commands; failures are kept for `ddpm-kit plugins`.
        plugins = get_plugin_manager()
        call_each(plugins, "register_commands", False, lambda info: ({"cli": cli}, lambda: None))
        cli.main(args=argv, prog_name="ddpm-kit", standalone_mode=False, obj={"plugins": plugins})
    except DdpmKitError as exc:
        if debug:
            raise
        hint = " (run with --debug for the plugin's traceback)" if isinstance(exc, PluginError) else ""
        click.echo(f"error: {exc}{hint}", err=True)
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:  # unexpected: one line unless --debug
        if debug:
            raise
        click.echo(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        sys.exit(1)
