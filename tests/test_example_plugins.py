"""The example plugin packages of examples/plugins/: one per kind a user is likely to add (a schedule,
a sampler, an objective, a metric, a backbone), pip-built as a user would, written against
``ddpm_kit.api`` only, all five swapped into one run, and each held against closed forms."""

import ast
import json
import math
import shutil
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_kit.testing import oracle
from helpers import ENV, TINY, Started, cli, drop_modules, make_diffusion, set_args

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "plugins"
PACKAGE_TESTS = sorted([*EXAMPLES.glob("*/tests"), *(EXAMPLES.parents[1] / "plugins").glob("*/tests")])
# entry-point (plugin) name -> (kind, component name)
COMPONENTS = {"sigmoid": ("schedule", "sigmoid"), "heun": ("sampler", "heun"), "huber": ("objective", "huber"),
              "pixelstats": ("metric", "pixelstats"), "tinyconv": ("backbone", "tinyconv")}
ALLOWED_THIRD_PARTY = {"torch", "numpy", "click"}


@pytest.fixture(scope="module")
def examples(example_plugin_site):
    """A registry with the installed examples (conftest.py's ``example_plugin_site``: the five packages
    pip-built and unpacked into a private folder, on sys.path for this module only, so in-process CLI
    calls see them too)."""
    from ddpm_kit.api import get_registry

    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(example_plugin_site))
        yield get_registry()
    drop_modules(*(f"ddpm_kit_{name}" for name in COMPONENTS))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread computes them fastest, and does not spin against a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- (a) packaging: real packages, public API only -----------------------------------------------

@pytest.mark.parametrize("plugin", COMPONENTS)
def test_each_example_is_a_package_that_imports_only_the_public_api(plugin):
    root = EXAMPLES / f"ddpm-kit-{plugin}"
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["name"] == f"ddpm-kit-{plugin}"
    assert project["project"]["entry-points"]["ddpm_kit"] == {plugin: f"ddpm_kit_{plugin}"}
    assert project["build-system"]["build-backend"] == "setuptools.build_meta"
    assert (root / "README.md").read_text().startswith(f"# ddpm-kit-{plugin}\n")
    sources = sorted((root / f"ddpm_kit_{plugin}").rglob("*.py"))
    assert sources
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                where = f"{source.relative_to(EXAMPLES)}:{node.lineno}: {module}"
                if top == "ddpm_kit":
                    assert isinstance(node, ast.ImportFrom) and module == "ddpm_kit.api", where
                else:
                    assert top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY \
                        or top == f"ddpm_kit_{plugin}", where


# -- (b) the registry lists them -----------------------------------------------------------------

def test_plugins_json_lists_every_example_component_as_ok(examples):
    result = cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    for plugin, (kind, name) in COMPONENTS.items():
        mine = [r for r in rows if r["plugin"] == plugin]
        assert mine == [{"kind": kind, "name": name, "plugin": plugin, "distribution": f"ddpm-kit-{plugin}",
                         "version": "0.1.0", "status": "ok"}], mine


def test_details_show_the_parameters_and_the_engine_supplied_arguments(examples):
    (heun,) = examples.details("heun")
    assert heun["parameters"] == [{"name": "steps", "type": "int", "default": 20}]
    assert heun["engine_supplies"] == ["num_timesteps", "diffusion"]
    (tiny,) = examples.details("tinyconv")
    assert tiny["engine_supplies"] == ["in_channels", "out_channels", "image_size"]  # no num_classes
    (stats,) = examples.details("pixelstats")
    assert stats["parameters"][0] == {"name": "num_samples", "type": "int", "default": 64} and stats["check"]


# -- (c) all five in one run ---------------------------------------------------------------------

@pytest.mark.slow
def test_a_run_with_all_five_examples_trains_samples_and_evaluates(examples, tmp_path):
    run = tmp_path / "run"
    overrides = ['diffusion.schedule={name="sigmoid", T=50}', 'backbone={name="tinyconv", channels=16}',
                 'objective={name="huber", delta=0.5}', 'sample.sampler={name="heun", steps=5}',
                 'eval.metrics=[{name="pixelstats", num_samples=8}, '
                 '{name="bpd", limit=8, batch_size=8, timesteps_per_batch=10}]']
    result = cli("run", str(TINY), "--run-dir", str(run), *set_args(overrides))
    assert result.returncode == 0, result.stderr
    assert "callback contract" not in result.stderr  # heun's i counts down 4..0
    recipe = tomllib.loads((run / "recipe.toml").read_text())
    assert (recipe["diffusion"]["schedule"]["name"], recipe["backbone"]["name"], recipe["objective"]["name"],
            recipe["sample"]["sampler"]["name"]) == ("sigmoid", "tinyconv", "huber", "heun")
    images = np.load(run / "samples" / "final.npz")["images"]
    assert images.shape == (8, 1, 8, 8) and images.dtype == np.uint8
    assert (run / "samples" / "final_progressive.png").is_file()
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    # pixelstats scored the run's final samples (8 of them, the same sampler): their mean in [-1, 1]
    assert metrics["pixelstats_samples"] == 8
    assert metrics["pixelstats_sample_mean"] == pytest.approx((images / 127.5 - 1).mean(), abs=1e-6)
    assert metrics["pixelstats_mean_gap"] == pytest.approx(
        abs(metrics["pixelstats_sample_mean"] - metrics["pixelstats_data_mean"]), abs=1e-12)
    assert metrics["pixelstats_std_gap"] >= 0 and -1 <= metrics["pixelstats_data_mean"] <= 1
    assert math.isfinite(metrics["bpd"]) and metrics["weights"] == "ema"
    histograms = np.load(run / "eval" / "pixelstats_histograms.npy")
    assert histograms.shape == (2, 32) and histograms[0].sum() == images.size


def test_recipe_check_refuses_what_the_examples_cannot_do(examples):
    """In-process ``recipe check`` (the examples' folder is on sys.path): heun's steps above T and a
    string for an int, heun on a schedule whose alpha-bar reaches 0, tinyconv in a conditional run,
    sigmoid's own check; each one line naming the key, exit 2."""
    def check(*overrides):
        result = cli("recipe", "check", str(TINY), *set_args(overrides))
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        return result.stderr.strip()

    assert check('sample.sampler={name="heun", steps=60}') == (
        f"error: {TINY}: sample.sampler: sampler 'heun' (plugin 'heun', ddpm-kit-heun 0.1.0): steps must lie in "
        "1..50 (the schedule's T), got 60")
    assert "Input should be a valid integer (got '10')" in check('sample.sampler={name="heun", steps="10"}')
    refused = check('sample.sampler.name="heun"', 'diffusion.schedule={name="jsd", T=50}')
    assert "sampler 'heun' needs alpha-bar > 0" in refused and "samplers that can: ancestral" in refused
    assert "no num_classes parameter" in check('backbone={name="tinyconv"}', "conditioning.num_classes=10")
    assert check('diffusion.schedule={name="sigmoid", T=1}').endswith("schedule 'sigmoid' needs T >= 2, got 1")
    assert "num_samples >= 2" in check('eval.metrics=[{name="pixelstats", num_samples=1}]')
    assert cli("recipe", "check", str(TINY), "--set", 'sample.sampler={name="heun", steps=50}').returncode == 0


# -- (d) against numbers from outside the code ---------------------------------------------------

def test_sigmoid_betas_run_from_beta_start_to_beta_end_monotone_and_symmetric(examples):
    for T, start, end in ((51, 1e-4, 0.02), (1000, 1e-4, 0.02), (2, 0.001, 0.5)):
        betas = examples.build("schedule", "sigmoid", {"T": T, "beta_start": start, "beta_end": end}).betas
        assert betas.dtype == torch.float64 and len(betas) == T
        assert betas[0].item() == start and betas[-1].item() == pytest.approx(end, rel=1e-15)
        assert bool((betas[1:] > betas[:-1]).all())
        # s(x) + s(-x) = 1 on a grid symmetric about 0: beta_t + beta_{T-1-t} = beta_start + beta_end
        torch.testing.assert_close(betas + betas.flip(0), torch.full_like(betas, start + end), rtol=0, atol=1e-15)
    middle = examples.build("schedule", "sigmoid", {"T": 51}).betas[25].item()
    assert middle == pytest.approx((1e-4 + 0.02) / 2, rel=1e-12)
    steepest = torch.diff(examples.build("schedule", "sigmoid", {"T": 100}).betas).argmax().item()
    assert steepest in (49, 50)  # fastest in the middle, unlike linear


class PointData(torch.nn.Module):
    """The exact eps of a one-image dataset x0 = c: eps = (x_t - sqrt(abar) c) / sqrt(1 - abar) (eq. 4)."""

    def __init__(self, betas: torch.Tensor, c: torch.Tensor) -> None:
        super().__init__()
        self.abar, self.c, self.calls = torch.cumprod(1 - betas.double(), 0), c, 0

    def forward(self, x, t):
        self.calls += 1
        ab = self.abar[t].to(x.dtype).view(-1, 1, 1, 1)
        return (x - ab.sqrt() * self.c.to(x.dtype)) / (1 - ab).sqrt()


def no_noise(like):
    raise AssertionError("heun drew noise")


@pytest.mark.parametrize("steps", [1, 7, 50])
def test_heun_takes_any_x_T_to_a_single_data_point(examples, steps):
    """For data that is one image c the ODE maps every x_T to c (eps-hat is exact, so every x0-hat
    is c). The callback counts down steps-1..0, the network is called 2 steps - 1 times, no noise."""
    betas = examples.build("schedule", "sigmoid", {"T": 50}).betas
    d = make_diffusion(examples, schedule="sigmoid", T=50)
    c = torch.linspace(-0.9, 0.9, 16).view(1, 1, 4, 4)
    model = PointData(betas, c)
    sampler = examples.build("sampler", "heun", {"steps": steps}, num_timesteps=50, diffusion=d)
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    reports = []
    out = sampler(d, model, x_T, callback=reports.append, noise=no_noise)
    torch.testing.assert_close(out, c.expand_as(out), rtol=0, atol=1e-4)
    assert [r["i"] for r in reports] == list(range(steps - 1, -1, -1)) and model.calls == 2 * steps - 1
    assert all(r["x0_hat"].shape == x_T.shape for r in reports) and reports[-1]["x"] is out


def heun_error(examples, steps, parameterization="eps", T=1000):
    """Max error of heun against the exact probability-flow map of Gaussian data N(m, s^2):
    xbar_sigma - m = (xbar_T - m) sqrt((s^2 + sigma^2) / (s^2 + sigma_T^2)), xbar = x / sqrt(abar), taken
    to sigma_0 (the last trained timestep), then heun's final Euler step to sigma = 0 in closed form."""
    d = make_diffusion(examples, parameterization=parameterization, T=T)
    model = oracle.EpsOracle(oracle.linear_betas(T), parameterization)
    x_T = torch.randn(256, 1, 1, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sampler = examples.build("sampler", "heun", {"steps": steps}, num_timesteps=T, diffusion=d)
    out = sampler(d, model, x_T, noise=no_noise)
    ab = np.cumprod(1 - oracle.linear_betas(T))
    m, s = oracle.M, oracle.S
    sigma_T, sigma_0 = math.sqrt((1 - ab[-1]) / ab[-1]), math.sqrt((1 - ab[0]) / ab[0])
    at_sigma_0 = m + (x_T / math.sqrt(ab[-1]) - m) * math.sqrt((s**2 + sigma_0**2) / (s**2 + sigma_T**2))
    expected = at_sigma_0 - sigma_0**2 * (at_sigma_0 - m) / (s**2 + sigma_0**2)  # xbar - sigma eps*
    return (out - expected).abs().max().item(), out


def test_heun_solves_the_gaussian_oracles_ode_to_second_order(examples):
    """Against the closed-form ODE map of the analytic Gaussian oracle: halving the step size divides
    the error by about 4 (Euler/DDIM: 2), so it converges to the closed form (0.013 at 40 steps)."""
    e10, e20, e40 = (heun_error(examples, k)[0] for k in (10, 20, 40))
    assert e10 / e20 > 3.5 and e20 / e40 > 3.5 and e40 < 0.03, (e10, e20, e40)


def test_heun_samples_every_parameterization_alike(examples):
    """A network predicting mu (or x0) that is the same optimal predictor gives the same samples:
    eps-hat comes from the run's own diffusion at the trained timestep (a respaced diffusion would
    read mu with the wrong posterior coefficients)."""
    _, eps = heun_error(examples, 10, "eps")
    for parameterization in ("mu", "x0"):
        torch.testing.assert_close(heun_error(examples, 10, parameterization)[1], eps, rtol=0, atol=1e-8)


def test_heun_refuses_steps_above_T_and_a_schedule_reaching_alpha_bar_zero(examples):
    from ddpm_kit.api import CannotSample, DdpmKitError

    d = make_diffusion(examples, T=10)
    with pytest.raises(DdpmKitError, match=r"steps must lie in 1\.\.10 \(the schedule's T\), got 11"):
        examples.build("sampler", "heun", {"steps": 11}, num_timesteps=10, diffusion=d)
    with pytest.raises(DdpmKitError, match="valid integer"):
        examples.build("sampler", "heun", {"steps": "10"}, num_timesteps=10, diffusion=d)
    jsd = make_diffusion(examples, "jsd", T=10)  # beta_T = 1: alpha-bar_T = 0
    with pytest.raises(CannotSample, match="alpha-bar > 0"):
        examples.build("sampler", "heun", {"steps": 5}, num_timesteps=10, diffusion=jsd)
    learned = make_diffusion(examples, variance="learned", T=10)  # the ODE ignores a learned variance
    assert examples.build("sampler", "heun", {"steps": 5}, num_timesteps=10, diffusion=learned) is not None


def huber_numpy(e: np.ndarray, delta: float) -> np.ndarray:
    """Per-example mean of 0.5 e^2 (|e| <= delta) or delta (|e| - delta / 2) (Huber 1964)."""
    a = np.abs(e)
    return np.where(a <= delta, 0.5 * e**2, delta * (a - 0.5 * delta)).reshape(len(e), -1).mean(1)


def test_huber_matches_its_definition_and_half_the_simple_mse_for_large_delta(examples):
    d = make_diffusion(examples, T=50)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 5, 10, 20, 40, 49])
    guess = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)  # eps-hat of a fixed, wrong "network"
    model = lambda x, t: guess  # noqa: E731
    e = (guess - noise).numpy()  # eps: the target is the noise itself
    for delta in (0.1, 0.5, 1.0):
        loss = examples.build("objective", "huber", {"delta": delta}).losses(d, model, x0, t, noise)["loss"]
        np.testing.assert_allclose(loss.numpy(), huber_numpy(e, delta), rtol=1e-12)
    simple = examples.build("objective", "simple").losses(d, model, x0, t, noise)["loss"]
    large = examples.build("objective", "huber", {"delta": 1e6}).losses(d, model, x0, t, noise)["loss"]
    torch.testing.assert_close(large, 0.5 * simple, rtol=1e-12, atol=0)


def test_huber_refuses_a_bad_delta_and_a_learned_variance(examples):
    from ddpm_kit.api import DdpmKitError

    with pytest.raises(DdpmKitError, match="needs delta > 0, got 0"):
        examples.build("objective", "huber", {"delta": 0})
    with pytest.raises(DdpmKitError, match="cannot train variance 'learned'"):
        examples.build("objective", "huber").validate_diffusion(make_diffusion(examples, variance="learned", T=10))


class StubContext:
    """What pixelstats asks of an EvalContext, with known images."""

    def __init__(self, samples, images):
        self._samples, self._images, self.saved = samples, images, {}

    def samples(self, n):
        return self._samples[:n]

    def images(self, split="test", limit=None):
        return self._images[:limit]

    def save_array(self, name, array):
        self.saved[name] = array


def test_pixelstats_gaps_are_the_differences_of_mean_and_std(examples):
    """Flat grey samples against data that is half -1, half +1: mean gap 0, std gap 1 (in [-1, 1] units)."""
    data = torch.cat([-torch.ones(4, 1, 2, 2), torch.ones(4, 1, 2, 2)])
    context = StubContext(torch.zeros(10, 1, 2, 2), data)
    figures = examples.build("metric", "pixelstats", {"num_samples": 6}).compute(context)
    assert figures["pixelstats_mean_gap"] == pytest.approx(0, abs=1e-12)
    assert figures["pixelstats_std_gap"] == pytest.approx(1, abs=1e-12)
    assert figures["pixelstats_samples"] == 6
    histograms = context.saved["pixelstats_histograms"]
    assert histograms[0].sum() == 24 and histograms[1, 0] == 16 and histograms[1, -1] == 16


def test_tinyconv_outputs_the_shape_the_engine_asks_for_and_depends_on_t(examples):
    for c_in, c_out, size in ((1, 1, 8), (3, 6, 5)):
        net = examples.build("backbone", "tinyconv", {"channels": 8}, in_channels=c_in, out_channels=c_out,
                             image_size=size)
        x = torch.randn(2, c_in, size, size, generator=torch.Generator().manual_seed(0))
        a, b = net(x, torch.tensor([0, 0])), net(x, torch.tensor([0, 40]))
        assert a.shape == (2, c_out, size, size)
        assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1])  # the time embedding reaches the output
    assert sum(p.numel() for p in net.parameters()) < 50_000


def test_tinyconv_time_embedding_is_the_sinusoidal_formula(examples):
    import ddpm_kit_tinyconv

    t = np.array([0, 1, 7, 999])
    k = np.arange(8)
    args = t[:, None] * 10000.0 ** (-k / 8)[None]
    expected = np.concatenate([np.sin(args), np.cos(args)], axis=1)
    got = ddpm_kit_tinyconv.timestep_embedding(torch.tensor(t), 16).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def start_in_background(request) -> Started:
    """Every example's and every plugin package's tests/ copied away from this repository and run by
    a pytest of their own, started with the session (conftest's ``started_with_the_session``): the examples from
    their pip-installed wheels, the plugin packages as setup.sh installs them."""
    site = request.getfixturevalue("example_plugin_site")
    folder = request.getfixturevalue("tmp_path_factory").mktemp("packages")
    for tests in PACKAGE_TESTS:
        shutil.copytree(tests, folder / tests.parent.name / "tests")
    return Started([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                    *(str(folder / t.parent.name / "tests") for t in PACKAGE_TESTS)], folder / "pytest.log",
                   cwd=folder, env={**ENV, "PYTHONPATH": str(site)})


@pytest.mark.slow
def test_each_plugin_package_is_tested_on_its_own_after_pip_install(background):
    """Nothing in the packages' tests reaches into the repository's tests/ (ddpm_kit.testing only)."""
    result = background[__name__].result()
    assert result.returncode == 0, result.stdout[-3000:]
    assert len(PACKAGE_TESTS) == 9  # the five examples and the four plugin packages
    assert int(result.stdout.strip().splitlines()[-1].split(" passed")[0].split()[-1]) >= 2 * len(PACKAGE_TESTS)