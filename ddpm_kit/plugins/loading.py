"""Loading plugins through pluggy, each in isolation (modelled on simonw/llm's plugins.py): the
built-ins through the same hooks as third-party packages (``[project.entry-points.ddpm_kit]``).
Unlike pluggy's own loader, a plugin that fails to import is recorded and skipped, and a misspelled
hook is recorded (with the hook it resembles) while the plugin's other hooks still work;
``strict=True`` makes either fatal. Duplicate entry-point names are both loaded."""

from __future__ import annotations

import importlib
import importlib.metadata as md
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from .. import __version__, hookspecs
from ..errors import DdpmKitError, did_you_mean, one_line

ENTRY_POINT_GROUP = "ddpm_kit"
BUILTIN_DISTRIBUTION = "ddpm-kit"

DEFAULT_PLUGINS: tuple[str, ...] = tuple(f"ddpm_kit.builtins.{module}" for module in (
    "schedules", "parameterizations", "variances", "decoders", "samplers", "diffusers_samplers", "objectives",
    "backbones", "datasets", "metrics"))


@dataclass(frozen=True)
class PluginInfo:
    """Where a registered plugin comes from."""

    name: str
    distribution: str
    version: str

    def __str__(self) -> str:
        """How messages name a plugin: ``'heun' (ddpm-kit-heun 0.1.0)``."""
        return f"'{self.name}' ({self.distribution} {self.version})"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be used, and why."""

    plugin: str
    distribution: str
    version: str
    stage: str  # "import", "hooks", "registration"
    error: str

    def __str__(self) -> str:
        return f"plugin '{self.plugin}' from {self.distribution} {self.version} failed at {self.stage}: {self.error}"


class _PluginManager(pluggy.PluginManager):
    """pluggy's manager, except that a hook implementation no spec names (``register_sampler``
    for ``register_samplers``) is skipped and noted in ``unknown_hooks`` rather than failing the
    whole plugin at ``check_pending``."""

    def __init__(self) -> None:
        super().__init__("ddpm_kit")
        self.unknown_hooks: list[str] = []

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is not None and getattr(getattr(self.hook, name, None), "spec", None) is None:
            self.unknown_hooks.append(name)
            return None
        return opts


@dataclass
class PluginSet:
    """A plugin manager plus what is known about its plugins."""

    pm: pluggy.PluginManager
    info: dict[str, PluginInfo] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)


def _fail(plugins: PluginSet, info: PluginInfo, stage: str, error: str, strict: bool) -> None:
    failure = PluginFailure(info.name, info.distribution, info.version, stage, error)
    if strict:
        raise DdpmKitError(f"{failure} (strict plugin mode)")
    plugins.failures.append(failure)


def _register(plugins: PluginSet, module: Any, info: PluginInfo, strict: bool) -> None:
    """Register one plugin module. A hook with wrong arguments unregisters it again; a hook no spec
    names is reported with the hook it resembles, and the plugin's other hooks stay registered."""
    plugins.pm.unknown_hooks.clear()
    try:
        plugins.pm.register(module, name=info.name)
        plugins.pm.check_pending()
    except Exception as exc:  # pluggy raises PluginValidationError / ValueError
        if plugins.pm.get_plugin(info.name) is not None:
            plugins.pm.unregister(name=info.name)
        _fail(plugins, info, "hooks", one_line(exc), strict)
        return
    plugins.info[info.name] = info
    for name in plugins.pm.unknown_hooks:
        hint = did_you_mean(name, (hook for hook in dir(hookspecs) if hook.startswith("register_")))
        _fail(plugins, info, "hooks", f"'{name}' is not a ddpm-kit hook{hint} (its other hooks are loaded)", strict)


def get_plugin_manager(*, strict: bool = False, entry_points: bool = True) -> PluginSet:
    """Build a fresh plugin manager with the built-ins and (optionally) installed plugins."""
    plugins = PluginSet(_PluginManager())
    plugins.pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        info = PluginInfo(module_name.rsplit(".", 1)[-1], BUILTIN_DISTRIBUTION, __version__)
        _register(plugins, importlib.import_module(module_name), info, strict=True)
    if entry_points:
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):  # one distribution found twice on the path is one
            dist = ep.dist.name if ep.dist else "unknown"
            name = ep.name if plugins.pm.get_plugin(ep.name) is None else f"{dist}:{ep.name}"
            info = PluginInfo(name, dist, ep.dist.version if ep.dist else "?")
            try:
                module = ep.load()
            except Exception as exc:  # any error in third-party import code
                _fail(plugins, info, "import", one_line(exc), strict)
                continue
            _register(plugins, module, info, strict)
    return plugins


def call_each(plugins: PluginSet, hook_name: str, strict: bool,
              make_kwargs: Callable[[PluginInfo], tuple[dict[str, Any], Callable[[], None]]]) -> None:
    """Call a hook on each plugin separately, so that one plugin's error is attributed to it.
    ``make_kwargs(info)`` returns the hook's arguments and a ``commit`` callback that runs only when
    the plugin's implementation returned without raising."""
    for impl in getattr(plugins.pm.hook, hook_name).get_hookimpls():
        info = plugins.info[impl.plugin_name]
        kwargs, commit = make_kwargs(info)
        try:
            impl.function(*[kwargs[arg] for arg in impl.argnames])
        except Exception as exc:  # third-party code: report, keep the others
            _fail(plugins, info, "registration", one_line(exc), strict)
            continue
        commit()


