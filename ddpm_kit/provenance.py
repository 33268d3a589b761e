"""What made a run: one record per command that writes into a run folder (``provenance.jsonl``; its
``LAYOUT`` entry lists what a record holds). ``--resume`` says in one line what changed since training
last wrote one; ``ddpm-kit report`` tabulates what differs between runs."""

from __future__ import annotations

import importlib.metadata as md
import platform
import subprocess
import time
from contextlib import suppress
from functools import lru_cache
from pathlib import Path
from typing import Any

import click

from . import __version__
from .plugins import Registry
from .recipe import Recipe
from .runs import RunFolder

LIBRARIES = ("torch", "diffusers", "accelerate", "datasets", "safetensors", "pluggy", "numpy")


@lru_cache(maxsize=1)
def source() -> dict[str, Any]:
    """ddpm-kit's version, and its git commit and dirty flag when it runs from a checkout."""
    where = Path(__file__).resolve().parent.parent
    record: dict[str, Any] = {"version": __version__, "commit": None, "dirty": None}
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    with suppress(OSError, subprocess.SubprocessError):
        if (where / ".git").exists():
            record["commit"] = git("rev-parse", "HEAD")
            record["dirty"] = bool(git("status", "--porcelain", "--untracked-files=no"))
    return record


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version(), **dict.fromkeys(LIBRARIES)}
    for name in LIBRARIES:
        with suppress(md.PackageNotFoundError):
            versions[name] = md.version(name)
    return versions


def record(run: RunFolder, command: str, registry: Registry, recipe: Recipe, state, **extra: Any) -> None:
    """Append this command's record to provenance.jsonl (main process; ``extra``: the step it resumes,
    what it writes); a resume first says in one line what changed since training last ran."""
    if not state.is_main_process:
        return
    import torch

    from .engine.distributed import describe

    device = torch.device(state.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    components = {}
    for key, kind, component in recipe.components():
        plugin = registry.resolve(kind, component.name).plugin
        components[key] = {"name": component.name, "plugin": plugin.name, "distribution": plugin.distribution,
                           "version": plugin.version}
    plugins = sorted({(p.distribution, p.version, p.name) for p in registry.plugins.info.values()})
    now = {"command": command, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra,
           "ddpm_kit": source(), "libraries": library_versions(), "components": components,
           "plugins": [{"name": n, "distribution": d, "version": v} for d, v, n in plugins],
           "broken_plugins": [str(f) for f in registry.failures],
           "processes": {**describe(state), "device_name": gpu or platform.processor() or platform.machine()}}
    if command == "resume":
        trained = [r for r in run.read_provenance() if r.get("command") in ("run", "resume")]
        if trained and (changed := changes(trained[-1], now)):
            click.echo(f"note: since {run.path} last trained: {'; '.join(changed)}", err=True)
    run.record_provenance(now)


def changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two records, as short phrases: "sample.sampler 'heun' from ddpm-kit-heun
    0.1.0 -> ddpm-kit-heun 0.2.0", "torch 2.13.0 -> 2.14.1", "ddpm-kit commit 1a2b3c4d5e -> 5d6e7f8a9b"."""
    found = []
    was_kit, kit = before.get("ddpm_kit", {}), now.get("ddpm_kit", {})
    for key in ("version", "commit"):
        if was_kit.get(key) != kit.get(key):
            found.append(f"ddpm-kit {key} {_short(was_kit.get(key))} -> {_short(kit.get(key))}")
    if kit.get("dirty") and not was_kit.get("dirty"):
        found.append("ddpm-kit's checkout has uncommitted changes")
    for name, version in now.get("libraries", {}).items():
        if before.get("libraries", {}).get(name) != version:
            found.append(f"{name} {before.get('libraries', {}).get(name)} -> {version}")
    for key, component in now.get("components", {}).items():
        was = before.get("components", {}).get(key)
        if was is not None and (was["distribution"], was["version"]) != (component["distribution"], component["version"]):
            found.append(f"{key} '{component['name']}' from {was['distribution']} {was['version']} -> "
                         f"{component['distribution']} {component['version']}")
    return found


def _short(value: Any) -> str:
    return value[:10] if isinstance(value, str) and len(value) == 40 else str(value)


def environment_rows(records: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, str]]]:
    """For ``ddpm-kit report``: each field of the runs' training records that differs between them,
    with each run's value (runs without a record show '-')."""
    def fields(r: dict[str, Any]) -> dict[str, str]:
        out = {"ddpm-kit": f"{r['ddpm_kit']['version']} {_short(r['ddpm_kit']['commit'] or '')}".strip()
               + (" (dirty)" if r["ddpm_kit"].get("dirty") else "")}
        out.update({name: str(v) for name, v in r["libraries"].items()})
        out.update({f"{key} '{c['name']}'": f"{c['distribution']} {c['version']}" for key, c in r["components"].items()})
        p = r["processes"]
        out["device"] = f"{p['device_name']} ({p['device']})"
        out["processes"] = f"{p['num_processes']} ({p['launcher']})"
        return out

    table = {run: fields(r) for run, r in records.items() if r}
    names = list(dict.fromkeys(k for f in table.values() for k in f))
    rows = [(name, {run: table.get(run, {}).get(name, "-") for run in records}) for name in names]
    return [(name, values) for name, values in rows if len(set(values.values())) > 1]
