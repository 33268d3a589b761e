"""The ``ddpm-kit`` command line. Plugins add commands through ``register_commands(cli)``."""

from __future__ import annotations

import json
import sys

import click

from . import __version__
from .errors import DdpmKitError
from .plugins import PluginSet, Registry, call_each, get_plugin_manager


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
@click.pass_context
def plugins_command(ctx: click.Context, as_json: bool) -> None:
    """List every component: kind, name, providing plugin, version, status."""
    rows = get_registry_from(ctx).rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    cols = ["kind", "name", "plugin", "distribution", "version", "status"]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols[:-1]}
    click.echo("  ".join(c.upper().ljust(widths.get(c, 0)) for c in cols).rstrip())
    for r in rows:
        click.echo("  ".join(r[c].ljust(widths.get(c, 0)) for c in cols).rstrip())


def _add_plugin_commands() -> PluginSet:
    """Load plugins once and let them add commands; failures are kept for `ddpm-kit plugins`."""
    plugins = get_plugin_manager()
    call_each(plugins, "register_commands", False, lambda info: ({"cli": cli}, lambda: None))
    return plugins


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line and exit 2; --debug shows the traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        plugins = _add_plugin_commands()
        cli.main(args=argv, prog_name="ddpm-kit", standalone_mode=False, obj={"plugins": plugins})
    except DdpmKitError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:  # unexpected: one line unless --debug
        if debug:
            raise
        click.echo(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        sys.exit(1)
