"""A factory's parameters: read from its signature, validated (pydantic, strictly as TOML values),
described for ``ddpm-kit plugins --details``. Engine-supplied arguments (``KINDS``) are decided here,
for every kind: a recipe never sets them."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

import pydantic

from ..errors import DdpmKitError, did_you_mean

if TYPE_CHECKING:
    from .registry import Provider


@dataclass(frozen=True)
class Kind:
    """A plugin kind: the hook that registers it, and the factory arguments the engine supplies
    (passed to the factories that declare them, never settable from a recipe)."""

    hook: str
    engine_context: tuple[str, ...] = ()


# kind -> its hook and engine context; the order is the order `ddpm-kit plugins` lists them in. What
# each engine-supplied argument is: docs/writing-a-plugin.md, "The engine supplies some arguments".
KINDS: dict[str, Kind] = {
    "schedule": Kind("register_schedules"),
    "parameterization": Kind("register_parameterizations"),
    "variance": Kind("register_variances"),
    "decoder": Kind("register_decoders"),
    "sampler": Kind("register_samplers", ("num_timesteps", "diffusion", "run_dir", "registry")),
    "objective": Kind("register_objectives"),
    "backbone": Kind("register_backbones", ("in_channels", "out_channels", "image_size", "num_classes")),
    "dataset": Kind("register_datasets"),
    "metric": Kind("register_metrics"),
}


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
            plain = isinstance(p.default, (bool, int, float, str, type(None)))
            entry["default"] = p.default if plain else repr(p.default)
        params.append(entry)
    return {"kind": provider.kind, "name": provider.name, "plugin": provider.plugin.name,
            "distribution": provider.plugin.distribution, "version": provider.plugin.version,
            "doc": doc.split("\n\n", 1)[0].replace("\n", " "), "parameters": params,
            "more_parameters": sorted(provider.extra_params()) if provider.extra_params else
            ("any" if accepts_var_kwargs(provider.factory) else []),
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
    return {n: p for n, p in signature(provider.factory).parameters.items()
            if n not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def accepts_var_kwargs(factory: Callable[..., Any]) -> bool:
    """Whether the factory takes ``**kwargs``."""
    return any(p.kind is p.VAR_KEYWORD for p in signature(factory).parameters.values())


def signature(factory: Callable[..., Any]) -> inspect.Signature:
    """A factory's signature with its annotations evaluated (a plugin module may use
    ``from __future__ import annotations``); as written when they cannot be evaluated."""
    try:
        return inspect.signature(factory, eval_str=True)
    except Exception:  # an annotation naming what only a type checker imports
        return inspect.signature(factory)


def validate_params(provider: Provider, params: dict[str, Any]) -> dict[str, Any]:
    """Validate recipe parameters against the factory's signature with pydantic; a key the engine
    supplies (``KINDS[kind].engine_context``) is refused, whatever the factory declares."""
    label = provider.title
    for key in params:
        if key in KINDS[provider.kind].engine_context:
            raise ParamError(f"{label}: '{key}' is supplied by the engine, never by a recipe; remove it", key)
    settable = factory_params(provider)
    fields = {n: (Any if p.annotation is p.empty else p.annotation, ... if p.default is p.empty else p.default)
              for n, p in settable.items()}
    extra = "allow" if accepts_var_kwargs(provider.factory) else "forbid"
    model = pydantic.create_model(f"{provider.kind}_{provider.name}_params",
                                  __config__=pydantic.ConfigDict(extra=extra, arbitrary_types_allowed=True), **fields)
    try:
        validated = _validate_strictly(model, params)
    except pydantic.ValidationError as exc:
        raise ParamError.from_pydantic(label, exc, sorted(settable)) from None
    values = {n: getattr(validated, n) for n in settable}
    extra = validated.model_extra or {}
    if provider.extra_params is not None:  # what its **kwargs take, when its registration says
        valid = set(settable) | set(provider.extra_params())
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


