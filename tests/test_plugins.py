"""Plugin loading: built-ins, pip-installed third-party packages, broken and colliding plugins.
The test packages (tests/plugin_packages: example, broken, collide) are pip-built and unpacked into
a private folder (conftest.py's ``mixed_plugin_site``); one test runs the real ``python -m ddpm_kit``
with it on PYTHONPATH, the others call the CLI in this process with it on sys.path."""

import json

import pytest

from ddpm_kit.errors import DdpmKitError
from helpers import TINY, cli, ddpm_kit, drop_modules


@pytest.fixture
def installed(mixed_plugin_site, monkeypatch):
    """The test packages visible to this process's entry-point scan (in-process CLI calls)."""
    monkeypatch.syspath_prepend(str(mixed_plugin_site))
    yield
    drop_modules("ddpm_kit_example", "ddpm_kit_collide", "ddpm_kit_broken")


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


def test_plugins_listing_shows_third_party_broken_and_colliding_honestly(installed):
    result = cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    by = {(r["kind"], r["name"], r["plugin"]): r for r in rows}
    sigmoid = by[("schedule", "sigmoid", "example")]
    assert (sigmoid["distribution"], sigmoid["version"]) == ("ddpm-kit-example", "1.2.3")
    assert by[("schedule", "linear", "collide")]["status"] == "shadowed"  # the built-in keeps the name
    assert by[("schedule", "linear", "schedules")]["status"] == "ok"
    assert by[("schedule", "sigmoid", "collide")]["status"] == by[("schedule", "sigmoid", "example")]["status"] \
        == "conflict"
    assert ("note: plugin 'collide' (ddpm-kit-collide 2.0.0) also offers schedule 'linear', a built-in name: recipes "
            "that say 'linear' get the built-in; 'collide:linear' reaches the plugin's") in result.stderr.splitlines()
    assert ("note: plugins 'collide' (ddpm-kit-collide 2.0.0) and 'example' (ddpm-kit-example 1.2.3) both offer "
            "schedule 'sigmoid': a recipe names the one it means, 'collide:sigmoid' or 'example:sigmoid'"
            ) in result.stderr.splitlines()
    assert " is conflict" not in result.stderr and " is shadowed" not in result.stderr
    broken = [r for r in rows if r["plugin"] == "broken"]
    assert len(broken) == 1 and broken[0]["distribution"] == "ddpm-kit-broken" and broken[0]["version"] == "0.0.1"
    assert "import" in broken[0]["status"] and "this_module_does_not_exist" in broken[0]["status"]
    typo = [r for r in rows if r["plugin"] == "typo"]  # the misspelled hook, and the valid one still registered
    assert [r["status"] for r in typo if r["kind"] == "-"] == [
        "broken (hooks): 'register_schedule' is not a ddpm-kit hook (did you mean 'register_schedules'?); valid: "
        "register_backbones, register_commands, register_datasets, register_decoders, register_metrics, "
        "register_objectives, register_parameterizations, register_samplers, register_schedules, register_variances "
        "(its other hooks are loaded)"]
    assert by[("sampler", "typo_ok", "typo")]["status"] == "ok"
    raising = [r for r in rows if r["plugin"] == "raising"]
    assert len(raising) == 1 and "broken (registration): RuntimeError: cannot register today" in raising[0]["status"]
    # the table form shows the same
    table = cli("plugins").stdout
    assert "ddpm-kit-example" in table and "broken (import)" in table and "conflict" in table


def test_third_party_command_and_component_work_beside_broken_ones(installed):
    from ddpm_kit.plugins import get_registry
    assert cli("hello").stdout.strip() == "hello from ddpm-kit-example"
    r = get_registry()
    assert r.build("schedule", "example:sigmoid", {"T": 10}).num_timesteps == 10
    assert r.build("schedule", "collide:linear", {"T": 4}).betas.tolist() == [0.5, 0.5, 0.5, 0.5]
    assert r.build("schedule", "ddpm-kit:linear", {"T": 2}).betas.tolist() == [0.0001, 0.02]
    # a component whose factory raises when built is named with its plugin and distribution
    with pytest.raises(DdpmKitError, match=r"^decoder 'exploding' \(plugin 'example', ddpm-kit-example 1\.2\.3\) "
                                           r"failed to build: RuntimeError: the exploding schedule always fails$"):
        r.build("decoder", "exploding")


def test_installing_a_plugin_never_changes_what_a_recipe_means(installed, tmp_path):
    """A plugin that also registers 'linear' leaves every recipe that says 'linear' (or gets it by
    default) on the built-in: ``recipe check`` passes and the betas are the built-in's; the plugin's
    is reached as 'collide:linear'. A name two third-party plugins offer is an error only for a
    recipe that uses it, and the error names both and how to pick one."""
    from ddpm_kit.plugins import get_registry
    assert cli("recipe", "check", str(TINY)).returncode == 0
    registry = get_registry()
    assert registry.build("schedule", "linear", {"T": 2}).betas.tolist() == [0.0001, 0.02]
    assert registry.build("schedule", "collide:linear", {"T": 2}).betas.tolist() == [0.5, 0.5]
    result = cli("recipe", "check", str(TINY), "--set", 'diffusion.schedule.name="sigmoid"')
    assert result.returncode == 2 and result.stderr.strip() == (
        f"error: {TINY}: diffusion.schedule.name: schedule 'sigmoid' is provided by both 'example' "
        "(ddpm-kit-example 1.2.3) and 'collide' (ddpm-kit-collide 2.0.0); pick one with 'example:sigmoid', "
        "'collide:sigmoid'")
    assert cli("recipe", "check", str(TINY), "--set", 'diffusion.schedule.name="collide:sigmoid"').returncode == 0


def test_an_unknown_name_mentions_the_plugins_that_failed_to_load(installed):
    result = cli("recipe", "check", str(TINY), "--set", 'diffusion.schedule.name="never"')
    assert result.returncode == 2
    line = result.stderr.strip()
    assert line.startswith(f"error: {TINY}: diffusion.schedule.name: unknown schedule 'never'") and "\n" not in line
    assert line.endswith("; plugins that failed to load: 'broken' (ddpm-kit-broken 0.0.1), 'raising' "
                         "(ddpm-kit-collide 2.0.0), 'typo' (ddpm-kit-collide 2.0.0) (see `ddpm-kit plugins`)")


def test_plugin_parameters_are_typed_strictly_and_listed_with_their_defaults(registry):
    """TOML's "10" is not an int nor "yes" a bool (an int is still a float); ``plugins --details``
    lists each parameter's type and default, and the factory docstring's first line."""
    for params, message in (({"T": "10"}, "parameter 'T': Input should be a valid integer (got '10')"),
                            ({"T": 10.0}, "parameter 'T': Input should be a valid integer (got 10.0)")):
        with pytest.raises(DdpmKitError, match=message.replace("(", r"\(").replace(")", r"\)")):
            registry.build("schedule", "linear", params)
    with pytest.raises(DdpmKitError, match="'clip_denoised': Input should be a valid boolean"):
        registry.build("sampler", "ancestral", {"clip_denoised": "yes"})
    assert registry.build("schedule", "linear", {"T": 2, "beta_end": 1}).betas[-1].item() == 1.0  # an int is a float
    result = cli("plugins", "--details", "ancestral", "--json")
    (entry,) = json.loads(result.stdout)
    assert entry["parameters"] == [{"name": "clip_denoised", "type": "bool", "default": True}]
    assert entry["doc"].startswith("Factory for the ancestral sampler") and entry["kind"] == "sampler"
    text = cli("plugins", "--details", "imagefolder").stdout
    assert "  path: str (required)\n  test_fraction: float (default 0.1)\n  seed: int (default 0)" in text


@pytest.mark.slow
def test_strict_plugins_makes_a_broken_plugin_fatal_in_one_line(mixed_plugin_site):
    """The real console entry (``python -m ddpm_kit``, its own interpreter) with pip-installed
    third-party plugins on its path: a broken one is fatal in one line, never a traceback."""
    result = ddpm_kit("--strict-plugins", "plugins", site=mixed_plugin_site)
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
    data.validate()
    data.split("train"), data.split("test")
    assert seen == [{"test_fraction": 0.1, "seed": 0}]  # once, with the defaults filled in


def test_a_recipe_naming_a_shadowed_name_is_told_once_which_one_it_gets(installed, tmp_path):
    """The tiny recipe names schedule 'linear', which ddpm-kit-collide offers too: `recipe check` and
    `run` say, once, that the recipe gets the built-in and how to reach the plugin's; with the
    plugin's name the note goes and the plugin's schedule is used."""
    note = ("note: {file}: diffusion.schedule: plugin 'collide' (ddpm-kit-collide 2.0.0) also offers schedule "
            "'linear', a built-in name: recipes that say 'linear' get the built-in; 'collide:linear' reaches the "
            "plugin's")
    result = cli("recipe", "check", str(TINY))
    assert result.returncode == 0 and result.stderr.splitlines().count(note.format(file=TINY)) == 1
    result = cli("run", str(TINY), "--run-dir", str(tmp_path / "run"), "--set", "train.steps=0", "--no-sample",
                 "--no-eval")
    assert result.returncode == 0 and result.stderr.splitlines().count(note.format(file=TINY)) == 1
    result = cli("recipe", "check", str(TINY), "--set", 'diffusion.schedule={name="collide:linear", T=50}')
    assert result.returncode == 0 and "note:" not in result.stderr


def test_strict_mode_names_two_plugins_offering_one_name_in_plain_words(installed):
    from ddpm_kit.plugins import Registry
    from ddpm_kit.plugins.loading import get_plugin_manager

    plugins = get_plugin_manager()
    plugins.failures.clear()  # the broken packages aside: the clash alone
    plugins.pm.unregister(name="raising")
    with pytest.raises(DdpmKitError) as raised:
        Registry(plugins, strict=True)
    assert str(raised.value).startswith("plugin 'collide' (ddpm-kit-collide 2.0.0) also offers schedule 'linear', a "
                                        "built-in name:")
    assert str(raised.value).endswith("(strict plugin mode: uninstall one of them, or leave --strict-plugins out)")
