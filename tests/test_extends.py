"""``extends`` at every depth: a child recipe that sets one key of a table keeps the parent's other
keys of that table; only a plugin component table (``recipe.COMPONENT_KEYS``) that names another
plugin replaces the parent's table, whose parameters would not fit. The cases cover every table of
the recipe schema (a test walks the schema and fails on a table without a case)."""

import tomli_w
import tomllib
import typing

import pydantic
import pytest

from ddpm_kit.recipe import COMPONENT_KEYS, Recipe, load_recipe, recipe_to_dict

from helpers import TINY

# (table, what the parent sets in it, what the child sets, what the child's resolved table holds)
CASES = [
    ("run", {"name": "parent", "output_dir": "out", "seed": 5}, {"name": "child"},
     {"name": "child", "output_dir": "out", "seed": 5}),
    ("data", {"random_flip": True, "resize": "pad"}, {"resize": "center_crop"},
     {"random_flip": True, "resize": "center_crop", "image_size": 8}),
    ("data.dataset", {"name": "digits", "test_fraction": 0.2}, {"seed": 3},
     {"name": "digits", "test_fraction": 0.2, "seed": 3}),
    ("data.dataset", {"name": "digits", "test_fraction": 0.2}, {"name": "mnist-5k"}, {"name": "mnist-5k"}),
    ("backbone", {"name": "unet2d", "preset": "cpu-tiny", "dropout": 0.1}, {"dropout": 0.2},
     {"name": "unet2d", "preset": "cpu-tiny", "dropout": 0.2}),
    ("conditioning", {"num_classes": 10, "label_dropout": 0.2}, {"label_dropout": 0.3},
     {"num_classes": 10, "label_dropout": 0.3, "label": "label"}),
    ("diffusion", {"parameterization": {"name": "x0"}}, {"variance": {"name": "fixed_beta_tilde"}},
     {"parameterization": {"name": "x0"}, "variance": {"name": "fixed_beta_tilde"}}),
    ("diffusion.schedule", {"name": "linear", "T": 50, "beta_end": 0.03}, {"T": 40},
     {"name": "linear", "T": 40, "beta_end": 0.03}),
    ("diffusion.schedule", {"name": "linear", "T": 50, "beta_end": 0.03}, {"name": "quad"}, {"name": "quad"}),
    ("diffusion.parameterization", {"name": "eps"}, {"name": "mu"}, {"name": "mu"}),
    ("diffusion.variance", {"name": "fixed_beta"}, {"name": "fixed_beta_tilde"}, {"name": "fixed_beta_tilde"}),
    ("diffusion.decoder", {"name": "discretized_gaussian", "bits": 7}, {"exact_cdf": False},
     {"name": "discretized_gaussian", "bits": 7, "exact_cdf": False}),
    ("objective", {"name": "vlb", "clip_denoised": True}, {"name": "vlb"}, {"name": "vlb", "clip_denoised": True}),
    ("objective", {"name": "vlb", "clip_denoised": True}, {"name": "simple"}, {"name": "simple"}),
    ("train", {"lr": 0.002, "warmup_steps": 3}, {"steps": 4}, {"lr": 0.002, "warmup_steps": 3, "steps": 4}),
    ("sample", {"num_images": 4, "seed": 7}, {"batch_size": 2}, {"num_images": 4, "seed": 7, "batch_size": 2}),
    ("sample.sampler", {"name": "ancestral", "clip_denoised": False}, {"name": "ancestral"},
     {"name": "ancestral", "clip_denoised": False}),
    ("sample.sampler", {"name": "ancestral", "clip_denoised": False}, {"name": "diffusers-ddim"},
     {"name": "diffusers-ddim"}),
    ("eval", {"use_ema": False, "metrics": [{"name": "bpd", "limit": 4}]}, {"metrics": [{"name": "bpd"}]},
     {"use_ema": False, "metrics": [{"name": "bpd"}]}),  # a list replaces the parent's, a key the table holds stays
]


def schema_tables(model: type[pydantic.BaseModel] = Recipe, prefix: str = "") -> set[str]:
    """Every table of the recipe schema: its sections and the components they name (a list of
    tables, such as eval.metrics, is a value: a child's list replaces the parent's)."""
    found = set()
    for name, field in model.model_fields.items():
        if typing.get_origin(field.annotation) is list:
            continue
        for annotation in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
                path = f"{prefix}{name}"
                found |= {path} | schema_tables(annotation, f"{path}.")
    return found


def nested(path: str, table: dict) -> dict:
    for part in reversed(path.split(".")):
        table = {part: table}
    return table


def at(resolved: dict, path: str) -> dict:
    for part in path.split("."):
        resolved = resolved[part]
    return resolved


def test_the_cases_cover_every_table_of_the_schema(registry):
    assert schema_tables() == {case[0] for case in CASES}
    replaced = {case[0] for case in CASES if case[1].get("name") != case[2].get("name", case[1].get("name"))}
    choices = {key for key, kind in COMPONENT_KEYS.items() if len(registry.names(kind)) > 1}
    assert choices <= replaced  # every component table with another built-in to name is replaced once


@pytest.mark.parametrize("table,parent,child,expected", CASES,
                         ids=[f"{c[0]}: {'another plugin' if c[0] in COMPONENT_KEYS and c[2].get('name', c[1].get('name')) != c[1].get('name') else 'merged'}"
                              for c in CASES])
def test_a_child_recipe_keeps_what_it_does_not_set(tmp_path, registry, table, parent, child, expected):
    base = tomllib.loads(TINY.read_text())
    merged_parent = {**base, **nested(table, parent)} if "." not in table else base
    if "." in table:  # a component table inside a section: the section keeps its other keys
        section, key = table.split(".")
        merged_parent = {**base, section: {**base.get(section, {}), key: parent}}
    elif table in base and isinstance(base[table], dict):
        merged_parent = {**base, table: {**base[table], **parent}}
    (tmp_path / "parent.toml").write_text(tomli_w.dumps(merged_parent))
    (tmp_path / "child.toml").write_text('extends = "parent.toml"\n' + tomli_w.dumps(nested(table, child)))
    recipe, resolved = load_recipe(tmp_path / "child.toml", registry)
    got = at(resolved, table)
    assert {key: got.get(key) for key in expected} == expected
    if table in COMPONENT_KEYS and child.get("name", parent.get("name")) != parent.get("name"):  # another plugin
        assert set(got) <= {"name"} | set(expected) | set(at(recipe_to_dict(load_recipe(
            _only(tmp_path, table, child), registry)[0]), table))
    if table == "run":
        assert recipe.run.seed == 5 and recipe.run.output_dir == "out"


def _only(tmp_path, table: str, child: dict):
    """The recipe with the child's table alone (no parent): what a different plugin resolves to."""
    base = tomllib.loads(TINY.read_text())
    if "." in table:
        section, key = table.split(".")
        base = {**base, section: {**base.get(section, {}), key: child}}
    else:
        base = {**base, table: child}
    path = tmp_path / "only.toml"
    path.write_text(tomli_w.dumps(base))
    return path
