"""Plugin loading and the component registry (modelled on simonw/llm's plugins.py).

Built-in plugins are registered through the same hooks as third-party ones. Third-party
packages declare ``[project.entry-points.ddpm_kit]``. Unlike pluggy's own loader, a plugin that
fails to import is recorded and skipped so the rest keep working, and a misspelled hook is
recorded (with the hook it resembles) while the plugin's other hooks still work; ``strict=True``
makes either fatal. Duplicate entry-point names are both loaded.

Installing a plugin never changes what an existing recipe means: a built-in name resolves to the
built-in even when a plugin registers the same name (the plugin's is ``plugin:name``, listed as
shadowed); two third-party plugins offering one name are an error only for a recipe that uses it.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import inspect
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import pluggy
import pydantic

from . import __version__, hookspecs
from .errors import DdpmKitError, PluginError, did_you_mean

ENTRY_POINT_GROUP = "ddpm_kit"
BUILTIN_DISTRIBUTION = "ddpm-kit"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "ddpm_kit.builtins.schedules",
    "ddpm_kit.builtins.parameterizations",
    "ddpm_kit.builtins.variances",
    "ddpm_kit.builtins.decoders",
    "ddpm_kit.builtins.samplers",
    "ddpm_kit.builtins.schedulers",
    "ddpm_kit.builtins.objectives",
    "ddpm_kit.builtins.backbones",
    "ddpm_kit.builtins.datasets",
    "ddpm_kit.builtins.metrics",
)

@dataclass(frozen=True)
class Kind:
    """A plugin kind: the hook that registers it, and the factory arguments the engine supplies
    (passed to the factories that declare them, never settable from a recipe)."""

    hook: str
    engine_context: tuple[str, ...] = ()


# kind -> its hook and engine context; the order is the order `ddpm-kit plugins` lists them in.
KINDS: dict[str, Kind] = {
    "schedule": Kind("register_schedules"),
    "parameterization": Kind("register_parameterizations"),
    "variance": Kind("register_variances"),
    "decoder": Kind("register_decoders"),
    # the run's diffusion lets a sampler factory refuse what it cannot sample (interfaces.CannotSample);
    # run_dir, the finished run being sampled (None while a run is set up), lets one read statistics
    # of the trained model that a plugin command computed into it (ddpm-kit-analytic's Gamma)
    "sampler": Kind("register_samplers", ("num_timesteps", "diffusion", "run_dir")),
    "objective": Kind("register_objectives"),
    # num_classes reaches only conditional runs' backbones; a backbone that can be conditioned declares it
    "backbone": Kind("register_backbones", ("in_channels", "out_channels", "image_size", "num_classes")),
    "dataset": Kind("register_datasets"),
    "metric": Kind("register_metrics"),
}


@dataclass(frozen=True)
class PluginInfo:
    """Where a registered plugin comes from."""

    name: str
    distribution: str
    version: str


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be used, and why."""

    plugin: str
    distribution: str
    version: str
    stage: str  # "import", "hooks", "registration"
    error: str

    def __str__(self) -> str:
        return (
            f"plugin '{self.plugin}' from {self.distribution} {self.version} failed at "
            f"{self.stage}: {self.error}"
        )


@dataclass(frozen=True)
class Provider:
    """One component offered by one plugin, with the optional hooks its registration declared:
    ``check(**params)`` rejects bad parameters cheaply, without building, by raising
    ``DdpmKitError``; it gets every parameter, defaults filled in. Recipe validation calls it for
    every kind but the dataset, whose check runs when a command first needs the data (``recipe
    check``, ``run``; a finished run samples after its data folder moved), and ``Registry.build``
    before every build. ``extra_params()`` names the keys a factory's ``**kwargs`` accept
    (validation rejects the others)."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: PluginInfo
    check: Callable[..., Any] | None = None
    extra_params: Callable[[], Iterable[str]] | None = None

    def matches_prefix(self, prefix: str) -> bool:
        return prefix in (self.plugin.name, self.plugin.distribution)

    @property
    def label(self) -> str:
        """``sampler 'heun' (plugin 'heun', ddpm-kit-heun 0.1.0)``: who to ask when it fails."""
        return f"{self.kind} '{self.name}' (plugin '{self.plugin.name}', {self.plugin.distribution} {self.plugin.version})"

    @property
    def builtin(self) -> bool:
        return self.plugin.distribution == BUILTIN_DISTRIBUTION

    def takes(self, argument: str) -> bool:
        """Whether the factory declares ``argument`` by name."""
        return argument in signature(self.factory).parameters


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


def hook_names() -> list[str]:
    """The hooks a plugin may implement (``ddpm_kit.hookspecs``)."""
    return sorted(n for n in dir(hookspecs) if n.startswith("register_"))


@dataclass
class PluginSet:
    """A plugin manager plus what is known about its plugins."""

    pm: pluggy.PluginManager
    info: dict[str, PluginInfo] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)


def _fail(plugins: PluginSet, failure: PluginFailure, strict: bool) -> None:
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
        _fail(plugins, PluginFailure(info.name, info.distribution, info.version, "hooks", _one_line(exc)), strict)
        return
    plugins.info[info.name] = info
    for name in plugins.pm.unknown_hooks:
        hint = did_you_mean(name, hook_names())
        _fail(plugins, PluginFailure(info.name, info.distribution, info.version, "hooks",
                                     f"'{name}' is not a ddpm-kit hook{hint} (its other hooks are loaded)"), strict)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _entry_points() -> list[md.EntryPoint]:
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        key = (ep.dist.name if ep.dist else "?", ep.name, ep.value)
        if key not in seen:
            seen.add(key)
            unique.append(ep)
    return unique


def get_plugin_manager(*, strict: bool = False, entry_points: bool = True) -> PluginSet:
    """Build a fresh plugin manager with the built-ins and (optionally) installed plugins."""
    plugins = PluginSet(_PluginManager())
    plugins.pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        info = PluginInfo(module_name.rsplit(".", 1)[-1], BUILTIN_DISTRIBUTION, __version__)
        _register(plugins, importlib.import_module(module_name), info, strict=True)
    if entry_points:
        for ep in _entry_points():
            dist = ep.dist.name if ep.dist else "unknown"
            version = ep.dist.version if ep.dist else "?"
            name = ep.name if plugins.pm.get_plugin(ep.name) is None else f"{dist}:{ep.name}"
            try:
                module = ep.load()
            except Exception as exc:  # any error in third-party import code
                _fail(plugins, PluginFailure(name, dist, version, "import", _one_line(exc)), strict)
                continue
            _register(plugins, module, PluginInfo(name, dist, version), strict)
    return plugins


def call_each(
    plugins: PluginSet,
    hook_name: str,
    strict: bool,
    make_kwargs: Callable[[PluginInfo], tuple[dict[str, Any], Callable[[], None]]],
) -> None:
    """Call a hook on each plugin separately, so that one plugin's error is attributed to it.

    ``make_kwargs(info)`` returns the hook's arguments and a ``commit`` callback that runs only
    when the plugin's implementation returned without raising.
    """
    for impl in getattr(plugins.pm.hook, hook_name).get_hookimpls():
        info = plugins.info[impl.plugin_name]
        kwargs, commit = make_kwargs(info)
        try:
            impl.function(*[kwargs[arg] for arg in impl.argnames])
        except Exception as exc:  # third-party code: report, keep the others
            _fail(plugins, PluginFailure(info.name, info.distribution, info.version, "registration", _one_line(exc)), strict)
            continue
        commit()


class Registry:
    """Every component of every kind, with the plugin that provides it."""

    def __init__(self, plugins: PluginSet, strict: bool = False) -> None:
        self.plugins = plugins
        self.providers: dict[str, dict[str, list[Provider]]] = {kind: {} for kind in KINDS}
        for kind, spec in KINDS.items():
            self._collect(kind, spec.hook, strict)
        if strict:
            clash = next((p for ps in self.providers.values() for qs in ps.values() for p in qs
                          if self.status(p) != "ok"), None)
            if clash is not None:
                raise DdpmKitError(f"{clash.kind} '{clash.name}' of plugin '{clash.plugin.name}' "
                                   f"({clash.plugin.distribution} {clash.plugin.version}) is {self.status(clash)}: "
                                   "another plugin offers the same name (strict plugin mode)")

    def _collect(self, kind: str, hook_name: str, strict: bool) -> None:
        def make_kwargs(info: PluginInfo):
            offered: list[Provider] = []

            def register(name: str, factory: Callable[..., Any], *, check: Callable[..., Any] | None = None,
                         extra_params: Callable[[], Iterable[str]] | None = None) -> None:
                if not isinstance(name, str) or not name or ":" in name:
                    raise ValueError(f"component name must be a non-empty string without ':', got {name!r}")
                for what, value in (("factory", factory), ("check", check), ("extra_params", extra_params)):
                    if value is not None and not callable(value):
                        raise TypeError(f"{what} for {kind} '{name}' is not callable")
                offered.append(Provider(kind, name, factory, info, check, extra_params))

            def commit() -> None:
                for provider in offered:
                    self.providers[kind].setdefault(provider.name, []).append(provider)

            return {"register": register}, commit

        call_each(self.plugins, hook_name, strict, make_kwargs)

    @property
    def failures(self) -> list[PluginFailure]:
        return self.plugins.failures

    def names(self, kind: str) -> list[str]:
        return sorted(self.providers[kind])

    def resolve(self, kind: str, name: str) -> Provider:
        """Find a component by ``name`` or ``plugin:name``. A bare name a built-in plugin offers is
        the built-in (plugins that offer it too are shadowed); a bare name two third-party plugins
        offer is an error; an unknown name suggests the closest and mentions broken plugins."""
        if kind not in self.providers:
            raise DdpmKitError(f"unknown component kind '{kind}'{did_you_mean(kind, self.providers)}")
        prefix, _, bare = name.rpartition(":")
        candidates = self.providers[kind].get(bare, [])
        if prefix:
            candidates = [p for p in candidates if p.matches_prefix(prefix)]
        elif any(p.builtin for p in candidates):
            candidates = [p for p in candidates if p.builtin]
        if not candidates:
            choices = list(self.providers[kind]) + [
                f"{p.plugin.name}:{p.name}" for ps in self.providers[kind].values() for p in ps
            ] if prefix else list(self.providers[kind])
            raise DdpmKitError(f"unknown {kind} '{name}'{did_you_mean(name, choices)}{self._broken_note()}")
        if len(candidates) > 1:
            who = " and ".join(f"'{p.plugin.name}' ({p.plugin.distribution} {p.plugin.version})" for p in candidates)
            picks = ", ".join(f"'{p.plugin.name}:{bare}'" for p in candidates)
            raise DdpmKitError(f"{kind} '{bare}' is provided by both {who}; pick one with {picks}")
        return candidates[0]

    def build(self, kind: str, name: str, params: dict[str, Any] | None = None, *, check: bool = True,
              **context: Any) -> Any:
        """Resolve a component and call its factory with validated ``params`` plus ``context``
        (the engine-supplied arguments of ``KINDS[kind]``, passed to factories that declare them),
        after its declared ``check`` unless the caller ran it already."""
        provider = self.resolve(kind, name)
        unknown = set(context) - set(KINDS[kind].engine_context)
        if unknown:
            raise TypeError(f"{kind} factories get no engine context {sorted(unknown)}; see plugins.KINDS")
        values = validate_params(provider, params or {})
        if check:
            run_check(provider, values)
        if not _accepts_var_kwargs(provider.factory):  # context a factory does not declare is not passed
            context = {k: v for k, v in context.items() if provider.takes(k)}
        with plugin_code(provider, "failed to build", error=DdpmKitError):  # its parameters, as a rule: exit 2
            return provider.factory(**context, **values)

    def check(self, kind: str, name: str, params: dict[str, Any] | None = None) -> None:
        """Validate ``params`` and run the component's declared ``check`` on them (defaults filled
        in), without building it."""
        provider = self.resolve(kind, name)
        run_check(provider, validate_params(provider, params or {}))

    def _broken_note(self) -> str:
        """For an unknown name: the plugins that failed to load may be where it was meant to be."""
        if not self.failures:
            return ""
        who = ", ".join(sorted({f"'{f.plugin}' ({f.distribution} {f.version})" for f in self.failures}))
        return f"; plugins that failed to load: {who} (see `ddpm-kit plugins`)"

    def status(self, provider: Provider) -> str:
        """``ok``, ``shadowed`` (a built-in has the name: reach it as ``plugin:name``), or
        ``conflict`` (another third-party plugin has it: a recipe must say which)."""
        others = [p for p in self.providers[provider.kind][provider.name] if p is not provider]
        if not others or provider.builtin:
            return "ok"
        return "shadowed" if any(p.builtin for p in others) else "conflict"

    def buildable(self, kind: str, **context: Any) -> list[str]:
        """The names of ``kind`` whose factories build with their default parameters and ``context``
        (which samplers can sample a diffusion, say); ambiguous names and factories that refuse are
        left out."""
        names = []
        for name in self.names(kind):
            try:
                self.build(kind, name, **context)
            except DdpmKitError:
                continue
            names.append(name)
        return names

    def details(self, name: str) -> list[dict[str, Any]]:
        """``describe`` of every component called ``name`` (or ``plugin:name``), of any kind."""
        prefix, _, bare = name.rpartition(":")
        found = [describe(p) for kind in self.providers for p in self.providers[kind].get(bare, [])
                 if not prefix or p.matches_prefix(prefix)]
        if not found:
            every = {n for by_name in self.providers.values() for n in by_name}
            raise DdpmKitError(f"no component called '{name}'{did_you_mean(bare, every)}")
        return found

    def rows(self) -> list[dict[str, str]]:
        """One row per (kind, name, provider) plus one per failed plugin, for `ddpm-kit plugins`."""
        rows = []
        for kind, by_name in self.providers.items():
            for name in sorted(by_name):
                for p in by_name[name]:
                    rows.append({"kind": kind, "name": name, "plugin": p.plugin.name,
                                 "distribution": p.plugin.distribution, "version": p.plugin.version,
                                 "status": self.status(p)})
        for f in self.failures:
            rows.append({"kind": "-", "name": "-", "plugin": f.plugin, "distribution": f.distribution,
                         "version": f.version, "status": f"broken ({f.stage}): {f.error}"})
        return rows


def run_check(provider: Provider, values: dict[str, Any]) -> None:
    """The component's declared ``check`` on its validated parameters (defaults filled in), if it
    declared one; what else it raises names the plugin."""
    if provider.check is not None:
        with plugin_code(provider, "failed to check its parameters", error=DdpmKitError):
            provider.check(**values)


@contextmanager
def plugin_code(provider: Provider | tuple[Provider, ...], what: str,
                error: type[DdpmKitError] = PluginError) -> Iterator[None]:
    """Run a plugin's code: an exception it raises (other than a ``DdpmKitError``, which is already
    a message for the user) becomes one ``PluginError`` line naming the component, the plugin and
    its distribution, e.g. ``sampler 'heun2' (plugin 'mine', ddpm-kit-mine 0.1) failed while
    sampling: RuntimeError: ...``; the original stays the cause (``--debug`` prints it). Code that
    runs several plugins together (a training step: objective and backbone) names them all."""
    try:
        yield
    except DdpmKitError:
        raise
    except Exception as exc:  # plugin code: name the plugin and its distribution
        who = " or ".join(p.label for p in (provider if isinstance(provider, tuple) else (provider,)))
        raise error(f"{who} {what}: {_one_line(exc)}") from exc


def describe(provider: Provider) -> dict[str, Any]:
    """A component's reference entry: its docstring's first line, the parameters a recipe may set
    (type, default or required), the engine-supplied arguments it declares, its optional hooks."""
    doc = inspect.getdoc(provider.factory) or ""
    params = []
    for name, p in factory_params(provider).items():
        entry = {"name": name, "type": _type_name(p.annotation)}
        if p.default is inspect.Parameter.empty:
            entry["required"] = True
        else:
            entry["default"] = p.default if isinstance(p.default, (bool, int, float, str, type(None))) else repr(p.default)
        params.append(entry)
    return {"kind": provider.kind, "name": provider.name, "plugin": provider.plugin.name,
            "distribution": provider.plugin.distribution, "version": provider.plugin.version,
            "doc": doc.split("\n\n", 1)[0].replace("\n", " "), "parameters": params,
            "more_parameters": sorted(provider.extra_params()) if provider.extra_params else
            ("any" if _accepts_var_kwargs(provider.factory) else []),
            "engine_supplies": [k for k in KINDS[provider.kind].engine_context if provider.takes(k)],
            "check": provider.check is not None}


def _type_name(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return "any"
    if isinstance(annotation, str):
        return annotation
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def factory_params(provider: Provider) -> dict[str, inspect.Parameter]:
    """The parameters a recipe may set: the factory's keyword parameters minus the engine context."""
    skip = set(KINDS[provider.kind].engine_context)
    return {
        n: p for n, p in signature(provider.factory).parameters.items()
        if n not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _accepts_var_kwargs(factory: Callable[..., Any]) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in signature(factory).parameters.values())


def signature(factory: Callable[..., Any]) -> inspect.Signature:
    """A factory's signature with its annotations evaluated (a plugin module may use
    ``from __future__ import annotations``); as written when they cannot be evaluated."""
    try:
        return inspect.signature(factory, eval_str=True)
    except Exception:  # an annotation naming what only a type checker imports
        return inspect.signature(factory)


def validate_params(provider: Provider, params: dict[str, Any]) -> dict[str, Any]:
    """Validate recipe parameters against the factory's signature with pydantic."""
    signature = factory_params(provider)
    fields: dict[str, Any] = {}
    for n, p in signature.items():
        annotation = Any if p.annotation is inspect.Parameter.empty else p.annotation
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[n] = (annotation, default)
    extra = "allow" if _accepts_var_kwargs(provider.factory) else "forbid"
    model = pydantic.create_model(
        f"{provider.kind}_{provider.name}_params",
        __config__=pydantic.ConfigDict(extra=extra, arbitrary_types_allowed=True),
        **fields,
    )
    label = f"{provider.kind} '{provider.name}'"
    try:
        validated = _validate_strictly(model, params)
    except pydantic.ValidationError as exc:
        raise ParamError.from_pydantic(label, exc, sorted(signature)) from None
    values = {n: getattr(validated, n) for n in signature}
    extra = validated.model_extra or {}
    if provider.extra_params is not None:  # what its **kwargs take, when its registration says
        valid = set(signature) | set(provider.extra_params())
        for key in extra:
            if key not in valid:
                raise ParamError.unknown(label, key, valid)
    values.update(extra)
    return values


def _validate_strictly(model: type[pydantic.BaseModel], params: dict[str, Any]) -> pydantic.BaseModel:
    """Recipe values are TOML, i.e. JSON-like: validate them as JSON in pydantic's strict mode, so
    ``"10"`` is not an int and ``"yes"`` not a bool (an int is still a float, a string a path, a
    list a tuple). Values only code can pass (a tensor, say) are validated as Python objects."""
    try:
        text = json.dumps(params, default=_json_default)
    except TypeError:
        return model(**params)
    return model.model_validate_json(text, strict=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(type(value).__name__)


class ParamError(DdpmKitError):
    """A component parameter failed validation; ``key`` is the parameter's name."""

    def __init__(self, text: str, key: str) -> None:
        super().__init__(text)
        self.key = key

    @classmethod
    def unknown(cls, label: str, key: str, valid: Iterable[str]) -> ParamError:
        return cls(f"{label} has no parameter '{key}'{did_you_mean(key, valid)}", key)

    @classmethod
    def from_pydantic(cls, label: str, exc: pydantic.ValidationError, valid: list[str]) -> ParamError:
        err = exc.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            return cls.unknown(label, key, valid)
        if err["type"] == "missing":
            return cls(f"{label} needs parameter '{key}'", key)
        return cls(f"{label} parameter '{key}': {err['msg']} (got {err.get('input')!r})", key)


def get_registry(*, strict: bool = False, entry_points: bool = True) -> Registry:
    """A fresh registry of every component (built-ins plus installed plugins)."""
    return Registry(get_plugin_manager(strict=strict, entry_points=entry_points), strict=strict)
