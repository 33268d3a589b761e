"""Recipes: TOML files that name one plugin of each kind plus the engine's settings.

Validated with pydantic: the recipe's own keys here, each component's parameters against its
factory's signature (plugins.validate_params). Every error names the file, the key path, the bad
value and what would be valid. See docs/recipes.md.
"""

from __future__ import annotations

import copy
import operator
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from .errors import DdpmKitError, did_you_mean, prefixed
from .plugins import Registry
from .plugins.parameters import ParamError, validate_params
from .plugins.registry import run_check


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Component(BaseModel):
    """``name`` of a registered plugin plus that plugin's own parameters."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RunSection(Strict):
    name: str | None = None
    output_dir: str = "runs"
    seed: int = 0


class DataSection(Strict):
    dataset: Component
    image_size: int = Field(gt=0, le=4096)
    channels: Literal[1, 3] = 3
    resize: Literal["resize", "pad", "center_crop"] = "resize"
    random_flip: bool = False
    store: Literal["decoded", "encoded"] = "decoded"  # decoded once to disk, or decoded per batch in workers
    store_dir: str | None = None  # where prepared splits live (default: $DDPM_KIT_DATA_STORE or the cache)
    workers: int | None = Field(default=None, ge=1)  # processes that decode (the store, or batches when encoded)


class ConditioningSection(Strict):
    """A class-conditional run: which dataset column holds the class, how many classes, and how
    often a training example's label is dropped (classifier-free guidance training)."""

    label: str = "label"
    num_classes: int = Field(gt=1)
    label_dropout: float = Field(default=0.1, ge=0, lt=1)


class DiffusionSection(Strict):
    schedule: Component = Component(name="linear")
    parameterization: Component = Component(name="eps")
    variance: Component = Component(name="fixed_beta")
    decoder: Component = Component(name="discretized_gaussian")


class TrainSection(Strict):
    steps: int = Field(ge=0)
    batch_size: int = Field(gt=0)
    lr: float = Field(default=2e-4, gt=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(default=0, ge=0)
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"  # after the warm-up (diffusers' get_scheduler)
    grad_clip: float | None = Field(default=1.0, gt=0)
    grad_accum: int = Field(default=1, ge=1)
    ema_decay: float = Field(default=0.9999, ge=0, lt=1)
    ema_warmup: bool = False  # decay min(ema_decay, (1 + n) / (10 + n)) at update n + 1 (diffusers' EMAModel)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    log_every: int = Field(default=50, gt=0)
    checkpoint_every: int = Field(default=1000, ge=0)
    keep_checkpoints: int = Field(default=2, ge=1)
    sample_every: int = Field(default=0, ge=0)
    on_nonfinite: Literal["stop", "skip"] = "stop"
    channels_last: bool = False
    compile: bool = False
    # experiment trackers through accelerate (none by default): tensorboard, wandb, mlflow, ...
    log_with: list[Literal["tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab",
                           "trackio"]] = []
    eval_every: int = Field(default=0, ge=0)  # steps between evaluations of the EMA weights (0: none)
    eval_metrics: list[Component] | None = None  # default: eval.metrics
    best_metric: str | None = None  # a figure of those metrics, e.g. "fid": keeps checkpoints/best
    best_mode: Literal["min", "max"] = "min"

    @pydantic.model_validator(mode="after")
    def _batch_splits(self) -> TrainSection:
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} must be divisible by grad_accum {self.grad_accum}")
        if self.best_metric and not self.eval_every:
            raise ValueError("best_metric needs eval_every > 0 (the evaluations it picks the best of)")
        return self


class SampleSection(Strict):
    sampler: Component = Component(name="ancestral")
    num_images: int = Field(default=64, gt=0)
    batch_size: int = Field(default=64, gt=0)
    seed: int = 0
    use_ema: bool = True
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    channels_last: bool = False
    compile: bool = False
    # conditional runs: the classes to draw (default: every class, one grid row each; -1 is "no
    # label") and the guidance scale w of eps~ = (1 + w) eps(x, y) - w eps(x) (Ho & Salimans 2022)
    classes: list[int] | None = None
    guidance_scale: float = Field(default=0.0, ge=0)


class EvalSection(Strict):
    metrics: list[Component] = [Component(name="bpd")]
    use_ema: bool = True


class Recipe(Strict):
    extends: str | None = None
    run: RunSection = RunSection()
    data: DataSection
    backbone: Component
    conditioning: ConditioningSection | None = None
    diffusion: DiffusionSection = DiffusionSection()
    objective: Component = Component(name="simple")
    train: TrainSection
    sample: SampleSection = SampleSection()
    eval: EvalSection = EvalSection()

    @pydantic.model_validator(mode="after")
    def _conditioning_fits_sampling(self) -> Recipe:
        c, s = self.conditioning, self.sample
        if c is None and (s.classes is not None or s.guidance_scale):
            raise ValueError("sample.classes and sample.guidance_scale need a [conditioning] section "
                             "(a class-conditional run)")
        if c is not None:
            bad = [k for k in s.classes or [] if not -1 <= k < c.num_classes]
            if bad:
                raise ValueError(f"sample.classes {bad} out of range: classes are 0..{c.num_classes - 1}, "
                                 "-1 for no label")
            if (s.guidance_scale or -1 in (s.classes or [])) and c.label_dropout == 0:
                raise ValueError("sample.guidance_scale > 0 and class -1 need the unconditional branch: set "
                                 "conditioning.label_dropout > 0 (e.g. 0.1) when training")
        return self

    def component(self, key: str) -> Component:
        """The component at a key of ``COMPONENT_KEYS`` (``"diffusion.schedule"``, say)."""
        return operator.attrgetter(key)(self)

    def components(self) -> list[tuple[str, str, Component]]:
        """(key path, kind, component) for every plugin the recipe names."""
        found = [(key, kind, self.component(key)) for key, kind in COMPONENT_KEYS.items()]
        for key in METRIC_LIST_KEYS:
            found += [(f"{key}[{i}]", "metric", m) for i, m in enumerate(self.component(key) or [])]
        return found


# Where a recipe names a plugin, and the plugin kind it names (the key's last part): what validation
# checks and what the engine builds (engine.components) both walk this table.
COMPONENT_KEYS: dict[str, str] = {key: key.rpartition(".")[2] for key in (
    "data.dataset", "backbone", "diffusion.schedule", "diffusion.parameterization", "diffusion.variance",
    "diffusion.decoder", "objective", "sample.sampler")}
METRIC_LIST_KEYS = ("eval.metrics", "train.eval_metrics")  # lists of metric components


def deep_merge(base: dict[str, Any], override: dict[str, Any], path: str = "") -> dict[str, Any]:
    """``override`` on top of ``base``; tables merge key by key, other values replace. Only a
    component table (a key of ``COMPONENT_KEYS``) that names a different plugin replaces the base's,
    whose parameters would not fit it; ``[run]``'s ``name`` is a name, not a plugin."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        old, here = merged.get(key), f"{path}.{key}" if path else key
        if isinstance(value, dict) and isinstance(old, dict) and not (
                here in COMPONENT_KEYS and value.get("name", old.get("name")) != old.get("name")):
            merged[key] = deep_merge(old, value, here)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_toml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe file, following ``extends = "base.toml"`` (relative to the file)."""
    if not path.is_file():
        raise DdpmKitError(f"{path}: recipe file not found")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DdpmKitError(f"{path}: not valid TOML: {exc}") from None
    base_name = data.get("extends")
    if base_name is None:
        return data
    if not isinstance(base_name, str):
        raise DdpmKitError(f"{path}: extends: must be a file name, got {base_name!r}")
    base_path = (path.parent / base_name).resolve()
    if base_path in seen:
        raise DdpmKitError(f"{path}: extends: '{base_name}' forms a cycle")
    merged = deep_merge(read_toml(base_path, (*seen, path.resolve())), data)
    merged.pop("extends")
    return merged


def parse_override(text: str, flag: str = "--set", example: str = "train.steps=200") -> tuple[list[str], Any]:
    """``train.steps=200`` -> (["train", "steps"], 200); values are TOML literals, else strings."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        form = "KEY.PATH=VALUE" if flag == "--set" else "KEY=VALUE"
        raise DdpmKitError(f"{flag} {text!r}: expected {form}, e.g. {example}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise DdpmKitError(f"--set {text!r}: '{part}' is not a table")
        node[path[-1]] = value
    return data


def format_validation_error(source: str, exc: pydantic.ValidationError) -> str:
    """The most telling error as one line: an unknown key first (it usually explains a missing one)."""
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(err["loc"])
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).removeprefix(".")
    if err["type"] == "extra_forbidden":  # a key of the recipe or of a table in it: list that table's
        owner: Any = Recipe
        for part in loc[:-1]:  # down the tables; ``conditioning``'s is ``ConditioningSection | None``
            held = owner.model_fields[part].annotation
            owner = next(m for m in (held, *get_args(held)) if isinstance(m, type) and issubclass(m, BaseModel))
        return f"{source}: unknown key '{key}'{did_you_mean(str(loc[-1]), owner.model_fields)}"
    if err["type"] == "missing":
        return f"{source}: missing key '{key}'"
    if isinstance(err.get("input"), dict):  # a check across keys (a model validator): its message says it all
        return f"{source}: {key or 'recipe'}: {err['msg'].removeprefix('Value error, ')}"
    return f"{source}: {key}: {err['msg']} (got {err.get('input')!r})"


def validate_recipe(data: dict[str, Any], registry: Registry, source: str) -> Recipe:
    """Check a recipe's keys and every component's name and parameters."""
    try:
        recipe = Recipe.model_validate(data)
    except pydantic.ValidationError as exc:
        raise DdpmKitError(format_validation_error(source, exc)) from None
    for key, kind, comp in recipe.components():
        with prefixed(f"{source}: {key}.name"):
            provider = registry.resolve(kind, comp.name)
        try:
            values = validate_params(provider, comp.params)
            if kind != "dataset":  # a dataset's check runs when its data are needed
                run_check(provider, values)
        except DdpmKitError as exc:  # a parameter's error names the parameter
            at = f"{key}.{exc.key}" if isinstance(exc, ParamError) else key
            raise DdpmKitError(f"{source}: {at}: {exc}") from None
    return recipe


def shadowing_notes(recipe: Recipe, registry: Registry) -> list[str]:
    """For each bare name of the recipe that an installed plugin offers beside the built-in of that
    name: that the recipe gets the built-in, and how to reach the plugin's (once per plugin)."""
    notes: dict[tuple[str, str, str], str] = {}
    for key, kind, component in recipe.components():
        for provider in registry.providers[kind].get(component.name, []):
            if ":" not in component.name and registry.status(provider) == "shadowed":
                notes.setdefault((kind, component.name, provider.plugin.name), f"{key}: {registry.explain(provider)}")
    return list(notes.values())


def load_recipe(path: str | Path, registry: Registry, overrides: list[str] = ()) -> tuple[Recipe, dict[str, Any]]:
    """Read, override and validate a recipe; returns it and the resolved plain dict."""
    path = Path(path)
    data = apply_overrides(read_toml(path), list(overrides))
    recipe = validate_recipe(data, registry, str(path))
    return recipe, recipe_to_dict(recipe)


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe (defaults filled in, ``extends`` applied) as TOML-ready data."""
    return recipe.model_dump(mode="json", exclude_none=True, exclude={"extends"})
