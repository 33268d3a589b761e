"""The registry: every component of every kind, with the plugin that provides it.

Installing a plugin never changes what an existing recipe means: a built-in name resolves to the
built-in even when a plugin registers the same name (the plugin's is ``plugin:name``, listed as
shadowed); two third-party plugins offering one name are an error only for a recipe that uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..errors import DdpmKitError, PluginError, did_you_mean, one_line
from .loading import BUILTIN_DISTRIBUTION, PluginFailure, PluginInfo, PluginSet, call_each, get_plugin_manager
from .parameters import KINDS, accepts_var_kwargs, describe, signature, validate_params


@dataclass(frozen=True)
class Provider:
    """One component offered by one plugin, with the optional hooks its registration declared:
    ``check(**params)`` rejects bad parameters (every one, defaults filled in) without building;
    ``extra_params()`` names the keys a factory's ``**kwargs`` accept. When each runs:
    docs/writing-a-plugin.md, "Registering"."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: PluginInfo
    check: Callable[..., Any] | None = None
    extra_params: Callable[[], Iterable[str]] | None = None

    @property
    def label(self) -> str:
        """``sampler 'heun' (plugin 'heun', ddpm-kit-heun 0.1.0)``: who to ask when it fails."""
        info = self.plugin
        return f"{self.kind} '{self.name}' (plugin '{info.name}', {info.distribution} {info.version})"

    @property
    def title(self) -> str:
        """How a message about its parameters names it: ``sampler 'ancestral'`` for a built-in, the
        full ``label`` (plugin and distribution) for a plugin's."""
        return f"{self.kind} '{self.name}'" if self.builtin else self.label

    @property
    def builtin(self) -> bool:
        return self.plugin.distribution == BUILTIN_DISTRIBUTION

    def takes(self, argument: str) -> bool:
        """Whether the factory declares ``argument`` by name."""
        return argument in signature(self.factory).parameters


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
                raise DdpmKitError(f"{self.explain(clash)} (strict plugin mode: uninstall one of them, or leave "
                                   "--strict-plugins out)")

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
        offer is an error; an unknown name suggests the closest and mentions the plugins that failed
        to load (it may be one of theirs)."""
        if kind not in self.providers:
            raise DdpmKitError(f"unknown component kind '{kind}'{did_you_mean(kind, self.providers)}")
        prefix, _, bare = name.rpartition(":")
        candidates = self._offering([kind], name)
        if not prefix and any(p.builtin for p in candidates):
            candidates = [p for p in candidates if p.builtin]
        if not candidates:
            choices = list(self.providers[kind])
            if prefix:  # a plugin's component was meant: suggest among every plugin:name too
                choices += [f"{p.plugin.name}:{p.name}" for ps in self.providers[kind].values() for p in ps]
            broken = ", ".join(sorted({f"'{f.plugin}' ({f.distribution} {f.version})" for f in self.failures}))
            note = f"; plugins that failed to load: {broken} (see `ddpm-kit plugins`)" if broken else ""
            raise DdpmKitError(f"unknown {kind} '{name}'{did_you_mean(name, choices)}{note}")
        if len(candidates) > 1:
            who = " and ".join(str(p.plugin) for p in candidates)
            picks = ", ".join(f"'{p.plugin.name}:{bare}'" for p in candidates)
            raise DdpmKitError(f"{kind} '{bare}' is provided by both {who}; pick one with {picks}")
        return candidates[0]

    def build(self, kind: str, name: str, params: dict[str, Any] | None = None, **context: Any) -> Any:
        """Resolve a component and call its factory with ``params`` (validated, then its declared
        ``check``) plus ``context`` (the engine-supplied arguments of ``KINDS[kind]``, passed to the
        factories that declare them)."""
        return self.validate(kind, name, params).build(**context)

    def validate(self, kind: str, name: str, params: dict[str, Any] | None = None) -> Validated:
        """``params`` validated against the factory's signature, defaults filled in, and passed
        through the component's declared ``check``; ``.build(**context)`` builds it."""
        provider = self.resolve(kind, name)
        values = validate_params(provider, params or {})
        run_check(provider, values)
        return Validated(provider, values)

    def status(self, provider: Provider) -> str:
        """``ok``, ``shadowed`` (a built-in has the name: reach it as ``plugin:name``), or
        ``conflict`` (another third-party plugin has it: a recipe must say which)."""
        others = [p for p in self.providers[provider.kind][provider.name] if p is not provider]
        if not others or provider.builtin:
            return "ok"
        return "shadowed" if any(p.builtin for p in others) else "conflict"

    def explain(self, provider: Provider) -> str:
        """A shadowed or conflicting component's situation (its ``status`` is not ``ok``) in plain
        words, with how to reach it."""
        what = f"{provider.kind} '{provider.name}'"
        if self.status(provider) == "shadowed":
            return (f"plugin {provider.plugin} also offers {what}, a built-in name: recipes that say '{provider.name}' "
                    f"get the built-in; '{provider.plugin.name}:{provider.name}' reaches the plugin's")
        offering = [provider, *(p for p in self.providers[provider.kind][provider.name] if p is not provider)]
        who = " and ".join(str(p.plugin) for p in offering)
        picks = " or ".join(f"'{p.plugin.name}:{provider.name}'" for p in offering)
        return f"plugins {who} both offer {what}: a recipe names the one it means, {picks}"

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
        found = [describe(p) for p in self._offering(self.providers, name)]
        if not found:
            every = {n for by_name in self.providers.values() for n in by_name}
            raise DdpmKitError(f"no component called '{name}'{did_you_mean(name.rpartition(':')[2], every)}")
        return found

    def _offering(self, kinds: Iterable[str], name: str) -> list[Provider]:
        """The providers of ``name`` among ``kinds``; ``plugin:name`` (or ``distribution:name``) keeps
        that plugin's."""
        prefix, _, bare = name.rpartition(":")
        return [p for kind in kinds for p in self.providers[kind].get(bare, [])
                if prefix in ("", p.plugin.name, p.plugin.distribution)]

    def rows(self) -> list[dict[str, str]]:
        """One row per (kind, name, provider) plus one per failed plugin, for `ddpm-kit plugins`."""
        rows = [{"kind": kind, "name": name, "plugin": p.plugin.name, "distribution": p.plugin.distribution,
                 "version": p.plugin.version, "status": self.status(p)}
                for kind, by_name in self.providers.items() for name in sorted(by_name) for p in by_name[name]]
        return rows + [{"kind": "-", "name": "-", "plugin": f.plugin, "distribution": f.distribution,
                        "version": f.version, "status": f"broken ({f.stage}): {f.error}"} for f in self.failures]


@dataclass(frozen=True)
class Validated:
    """A component's validated parameters, ready to build."""

    provider: Provider
    values: dict[str, Any]

    def build(self, **context: Any) -> Any:
        """Call the factory with the parameters and the engine's ``context`` (the arguments of
        ``KINDS[kind]`` it declares). A ``DdpmKitError`` it raises is prefixed with the component's
        name unless it names it already; anything else names the plugin."""
        provider = self.provider
        unknown = set(context) - set(KINDS[provider.kind].engine_context)
        if unknown:
            raise TypeError(f"{provider.kind} factories get no engine context {sorted(unknown)}; see plugins.KINDS")
        if not accepts_var_kwargs(provider.factory):  # context a factory does not declare is not passed
            context = {k: v for k, v in context.items() if provider.takes(k)}
        try:
            with plugin_code(provider, "failed to build", error=DdpmKitError):  # its parameters, as a rule: exit 2
                return provider.factory(**context, **self.values)
        except DdpmKitError as exc:
            if str(exc).startswith(f"{provider.kind} '{provider.name}'"):  # its title or label
                raise
            raise type(exc)(f"{provider.title}: {exc}") from exc.__cause__


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
        raise error(f"{who} {what}: {one_line(exc)}") from exc


def run_check(provider: Provider, values: dict[str, Any]) -> None:
    """The component's declared ``check`` on its validated parameters (defaults filled in), if it
    declared one; what else it raises names the plugin."""
    if provider.check is not None:
        with plugin_code(provider, "failed to check its parameters", error=DdpmKitError):
            provider.check(**values)


def get_registry(*, strict: bool = False, entry_points: bool = True) -> Registry:
    """A fresh registry of every component (built-ins plus installed plugins)."""
    return Registry(get_plugin_manager(strict=strict, entry_points=entry_points), strict=strict)
