"""Plugin loading: built-ins, pip-installed third-party packages, broken and colliding plugins."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ddpm_kit.errors import DdpmKitError
from helpers import TINY

PACKAGES = Path(__file__).parent / "plugin_packages"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """pip-install the three test plugin packages into a private target folder."""
    target = tmp_path_factory.mktemp("site")
    for name in ("ddpm-kit-example", "ddpm-kit-broken", "ddpm-kit-collide"):
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(PACKAGES / name)], check=True, capture_output=True)
    return target


def ddpm_kit(site, *args):
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-m", "ddpm_kit", *args], capture_output=True, text=True, env=env)


def test_builtins_cover_the_paper(registry):
    assert registry.names("schedule") == ["const", "jsd", "linear", "quad", "warmup10", "warmup50"]
    assert registry.names("parameterization") == ["eps", "mu", "x0"]
    assert registry.names("variance") == ["fixed_beta", "fixed_beta_tilde", "learned"]
    assert registry.names("objective") == ["simple", "vlb"]
    assert all(r["status"] == "ok" for r in registry.rows())


def test_unknown_name_suggests_close_match_and_lists_valid(registry):
    with pytest.raises(DdpmKitError) as e:
        registry.resolve("variance", "fixed_betta")
    assert "unknown variance 'fixed_betta' (did you mean 'fixed_beta'?); valid: fixed_beta, fixed_beta_tilde, learned" \
        == str(e.value)


def test_unknown_parameter_is_named(registry):
    with pytest.raises(DdpmKitError, match="schedule 'linear' has no parameter 'beta_strat' \\(did you mean 'beta_start'"):
        registry.build("schedule", "linear", {"beta_strat": 0.1})


def test_plugins_listing_shows_third_party_broken_and_colliding_honestly(site):
    result = ddpm_kit(site, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    by = {(r["kind"], r["name"], r["plugin"]): r for r in rows}
    sigmoid = by[("schedule", "sigmoid", "example")]
    assert (sigmoid["distribution"], sigmoid["version"], sigmoid["status"]) == ("ddpm-kit-example", "1.2.3", "ok")
    assert by[("schedule", "linear", "collide")]["status"] == "conflict"
    assert by[("schedule", "linear", "schedules")]["status"] == "conflict"
    broken = [r for r in rows if r["plugin"] == "broken"]
    assert len(broken) == 1 and broken[0]["distribution"] == "ddpm-kit-broken" and broken[0]["version"] == "0.0.1"
    assert "import" in broken[0]["status"] and "this_module_does_not_exist" in broken[0]["status"]
    typo = [r for r in rows if r["plugin"] == "typo"]
    assert len(typo) == 1 and "register_schedule" in typo[0]["status"] and "hooks" in typo[0]["status"]
    raising = [r for r in rows if r["plugin"] == "raising"]
    assert len(raising) == 1 and "broken (registration): RuntimeError: cannot register today" in raising[0]["status"]
    # the table form shows the same
    table = ddpm_kit(site, "plugins").stdout
    assert "ddpm-kit-example" in table and "broken (import)" in table and "conflict" in table


def test_third_party_command_and_component_work_beside_broken_ones(site):
    assert ddpm_kit(site, "hello").stdout.strip() == "hello from ddpm-kit-example"
    code = ("from ddpm_kit.plugins import get_registry; r = get_registry();"
            "print(r.build('schedule', 'sigmoid', {'T': 10}).num_timesteps);"
            "print(r.build('schedule', 'collide:linear', {'T': 4}).betas.tolist());"
            "print(r.build('schedule', 'ddpm-kit:linear', {'T': 2}).betas.tolist());"
            "r.build('decoder', 'exploding')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(site)})
    assert out.stdout.split("\n")[:3] == ["10", "[0.5, 0.5, 0.5, 0.5]", "[0.0001, 0.02]"], out.stderr
    # a component whose factory raises when built is named with its plugin and distribution
    assert ("DdpmKitError: decoder 'exploding' (plugin 'example', ddpm-kit-example 1.2.3) failed to build: "
            "RuntimeError: the exploding schedule always fails") in out.stderr


def test_collision_is_an_error_naming_both_providers(site):
    code = "from ddpm_kit.plugins import get_registry; get_registry().resolve('schedule', 'linear')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(site)})
    assert "schedule 'linear' is provided by both 'schedules' (ddpm-kit 0.1.0) and 'collide' (ddpm-kit-collide 2.0.0)" \
        in out.stderr
    assert "'collide:linear'" in out.stderr


def test_strict_plugins_makes_a_broken_plugin_fatal_in_one_line(site):
    result = ddpm_kit(site, "--strict-plugins", "plugins")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ddpm-kit-broken 0.0.1" in lines[0] and "Traceback" not in result.stderr


def test_a_sampler_that_cannot_sample_a_run_names_the_registered_samplers_that_can(registry):
    """Which samplers can sample a run is derived from the registry (every sampler factory is given
    the run's diffusion), not listed in the core: a third-party sampler that takes any run is named,
    one that refuses this run (CannotSample) is not, and every diffusers scheduler refuses mu."""
    from ddpm_kit.engine import build_components
    from ddpm_kit.interfaces import CannotSample
    from ddpm_kit.plugins import PluginInfo, Provider
    from ddpm_kit.recipe import load_recipe

    def anything():
        return lambda diffusion, model, x_T, **kwargs: x_T

    def eps_only(diffusion=None):
        if diffusion is not None and diffusion.parameterization.name != "eps":
            raise CannotSample(f"sampler 'eps-only' needs eps, this run predicts '{diffusion.parameterization.name}'")
        return lambda diffusion, model, x_T, **kwargs: x_T

    info = PluginInfo("mine", "ddpm-kit-mine", "0.1")
    registry.providers["sampler"]["anything"] = [Provider("sampler", "anything", anything, info)]
    registry.providers["sampler"]["eps-only"] = [Provider("sampler", "eps-only", eps_only, info)]
    recipe, _ = load_recipe(TINY, registry, ['sample.sampler.name="eps-only"', 'diffusion.parameterization.name="mu"'])
    with pytest.raises(CannotSample, match=r"tiny\.toml: sample\.sampler: sampler 'eps-only' needs eps, this run "
                                           r"predicts 'mu'; samplers that can: ancestral, anything$"):
        build_components(recipe, registry, str(TINY))
    recipe, _ = load_recipe(TINY, registry, ['sample.sampler.name="eps-only"'])
    assert build_components(recipe, registry, str(TINY)).sampler is not None


def test_a_declared_dataset_check_runs_before_the_dataset_is_built(registry, tmp_path):
    """``register(name, factory, check=...)``: the check gets the recipe's parameters and its error
    reaches the user, naming the file and the key, before the factory is ever called."""
    from ddpm_kit.engine import RunData
    from ddpm_kit.plugins import PluginInfo, Provider
    from ddpm_kit.recipe import load_recipe

    calls = []

    def check(rows: int = 10) -> None:
        calls.append(("check", rows))
        if rows < 1:
            raise DdpmKitError(f"rows must be at least 1, got {rows}")

    def factory(rows: int = 10):
        calls.append(("build", rows))
        return registry.build("dataset", "digits")

    registry.providers["dataset"]["checked"] = [Provider("dataset", "checked", factory, PluginInfo("c", "c", "0"),
                                                         check=check)]
    recipe, _ = load_recipe(TINY, registry, ['data.dataset={name="checked", rows=0}'])
    data = RunData(recipe, registry, "r.toml")
    with pytest.raises(DdpmKitError, match=r"^r\.toml: data\.dataset: rows must be at least 1, got 0$"):
        data.split("train")
    assert calls == [("check", 0)]
    recipe, _ = load_recipe(TINY, registry, ['data.dataset={name="checked", rows=5}'])
    assert len(RunData(recipe, registry, "r.toml").split("train")) > 0 and calls[1:] == [("check", 5), ("build", 5)]


def test_a_declared_check_of_any_other_kind_runs_when_the_recipe_is_validated(registry):
    """A sampler's ``check`` rejects its parameters at load time (nothing is built, the run folder
    is untouched), naming the file and the key; a dataset's check runs once however many times the
    data are asked for."""
    from ddpm_kit.engine import RunData
    from ddpm_kit.plugins import PluginInfo, Provider
    from ddpm_kit.recipe import load_recipe

    calls = []

    def check(steps: int = 10) -> None:
        calls.append(steps)
        if steps > 5:
            raise DdpmKitError(f"steps must be at most 5, got {steps}")

    def factory(steps: int = 10):
        raise AssertionError("validation must not build the sampler")

    registry.providers["sampler"]["short"] = [Provider("sampler", "short", factory, PluginInfo("s", "s", "0"),
                                                       check=check)]
    with pytest.raises(DdpmKitError, match=r"tiny\.toml: sample\.sampler: steps must be at most 5, got 9$"):
        load_recipe(TINY, registry, ['sample.sampler={name="short", steps=9}'])
    load_recipe(TINY, registry, ['sample.sampler={name="short", steps=3}'])
    assert calls == [9, 3]

    seen = []
    provider = registry.resolve("dataset", "digits")
    registry.providers["dataset"]["digits"] = [Provider("dataset", "digits", provider.factory, provider.plugin,
                                                        check=lambda **params: seen.append(params))]
    recipe, _ = load_recipe(TINY, registry, ['data.dataset={name="digits"}'])
    data = RunData(recipe, registry, "r.toml")
    data.check()
    data.split("train"), data.split("test")
    assert seen == [{}]
