"""Samplers held against outside numbers: ancestral sampling against the analytic Gaussian oracle's
closed-form moments (ddpm_kit.testing.oracle); diffusers' schedulers as sampler plugins against the oracle (exact
eps*), the reference closed-form ancestral figure and diffusers' own DDIMPipeline on the same noise;
and the sampler callback contract as the engine reads it (a sampler that never calls back, one that
reports timesteps, one that raises: tests/plugin_packages/ddpm-kit-faulty), down to the
progressive grid."""

import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_kit.testing import oracle
from helpers import TINY, ancestral_samples, cli, make_diffusion, test_seed
from ddpm_kit.builtins.diffusers_samplers import NAMES, VARIANTS
from ddpm_kit.errors import DdpmKitError


# -- ancestral sampling against the closed forms -------------------------------------------------

N_PIXELS = 64 * 32 * 32


@pytest.mark.slow  # about 1.6 s each: 1,000 steps over 64 images of 32x32
@pytest.mark.statistical
@pytest.mark.parametrize("param", ["eps", "x0", "mu"])
@pytest.mark.parametrize("variance", ["fixed_beta_tilde", "fixed_beta"])
def test_ancestral_sampling_hits_the_closed_form_moments(param, variance):
    """Mean and std of 65,536 sampled pixels against the closed forms, each within 4 Monte-Carlo
    standard errors (s / sqrt(n) = 0.00078 and s / sqrt(2n) = 0.00055): a correct sampler fails one
    of the two with probability 1.3e-4 for a random seed."""
    x = ancestral_samples(param, variance, test_seed(11))
    mean, std = oracle.sampled_moments(oracle.linear_betas(), variance)
    assert x.mean().item() == pytest.approx(mean, abs=4 * std / math.sqrt(N_PIXELS))
    assert x.std().item() == pytest.approx(std, abs=4 * std / math.sqrt(2 * N_PIXELS))


@pytest.mark.slow  # the eps draws above (3 s when run alone)
@pytest.mark.statistical
def test_sampling_distinguishes_the_two_variances():
    """On the same noise, sigma^2 = beta ends 0.00463 wider than beta-tilde (the reference 0.20093 vs
    0.19630). The two stds are positively correlated, so their difference has a standard error
    below sqrt(2) x 0.00055; 4 of those (0.0031) is less than the gap, so a swap (-0.00463) fails.
    (The same draws as the eps cases above: each is made once.)"""
    seed = test_seed(11)
    wide, narrow = (ancestral_samples("eps", v, seed).std().item() for v in ("fixed_beta", "fixed_beta_tilde"))
    gap = oracle.REFERENCE_STD["fixed_beta"] - oracle.REFERENCE_STD["fixed_beta_tilde"]
    assert wide - narrow == pytest.approx(gap, abs=4 * math.sqrt(2) * oracle.REFERENCE_STD["fixed_beta"]
                                          / math.sqrt(2 * N_PIXELS))


# -- diffusers' schedulers as samplers -----------------------------------------------------------

ALL = [f"diffusers-{n}" for n in [*NAMES.values(), *VARIANTS]]
STOCHASTIC = {"diffusers-ddpm", "diffusers-euler-ancestral", "diffusers-kdpm2-ancestral", "diffusers-sde-dpm-solver++"}
DETERMINISTIC = [n for n in ALL if n not in STOCHASTIC]
N = 2048 * 16  # samples per run (2048 images of 4x4 independent pixels)
SE_STD = oracle.S / math.sqrt(2 * N)  # Monte-Carlo standard error of a sample std: 0.00078


def draw(registry, name, steps, variance="fixed_beta_tilde"):
    """32,768 sampled pixels and their noise x_T; the noise is seeded by $DDPM_KIT_TEST_SEED."""
    seed = test_seed(1)
    d = make_diffusion(registry, T=1000, variance=variance)
    sampler = registry.build("sampler", name, {"steps": steps}, num_timesteps=1000)
    x_T = torch.randn(2048, 1, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = sampler(d, oracle.EpsOracle(d.betas.numpy()), x_T, generator=torch.Generator().manual_seed(seed + 1))
    return x, x_T


def moments(registry, name, steps, variance="fixed_beta_tilde"):
    x, _ = draw(registry, name, steps, variance)
    return x.mean().item(), x.std().item()


def exact_flow(x_T):
    """The probability-flow ODE's exact answer for this noise: for Gaussian data the marginals are
    N(sqrt(ab) m, ab s^2 + 1 - ab) and the flow keeps z = (x_t - sqrt(ab) m) / sd_t, so x_0 = m + s z."""
    ab_T = np.cumprod(1 - oracle.linear_betas())[-1]
    return oracle.M + oracle.S * (x_T - math.sqrt(ab_T) * oracle.M) / math.sqrt(ab_T * oracle.S**2 + 1 - ab_T)


def test_every_karras_family_scheduler_of_the_installed_diffusers_is_a_sampler(registry):
    import inspect

    import diffusers
    from diffusers.schedulers import KarrasDiffusionSchedulers

    fits = {m.name for m in KarrasDiffusionSchedulers if hasattr(diffusers, m.name) and {"trained_betas", "prediction_type"}
            <= set(inspect.signature(getattr(diffusers, m.name).__init__).parameters)}
    assert fits == set(NAMES)  # a new diffusers scheduler of the family fails here until it is named
    for name in ALL:
        assert registry.resolve("sampler", name)


@pytest.mark.statistical
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_schedulers_converge_to_the_data_distribution(registry, name):
    """With the exact eps*, the probability-flow ODE maps N(0, I) to the data's N(0.1, 0.2^2). Each
    solver is compared with the ODE's exact answer for the same noise (exact_flow), so there is no
    Monte-Carlo error in the comparison: its error shrinks from 25 to 250 steps and is small at 250."""
    (x25, x_T), (x250, _) = draw(registry, name, 25), draw(registry, name, 250)
    exact = exact_flow(x_T)
    error = {k: (x - exact).pow(2).mean().sqrt().item() for k, x in ((25, x25), (250, x250))}  # RMS per pixel
    assert error[250] < error[25] / 2  # DEIS gains least: 0.0027 -> 0.0009
    assert error[250] < 0.006  # first-order Euler is the slowest: 0.0052 (DDIM 0.0043)
    assert abs(x250.std().item() / exact.std().item() - 1) < 0.03  # Euler -2.6%, DDIM -2.1%
    assert exact.mean().item() == pytest.approx(oracle.M, abs=4 * oracle.S / math.sqrt(N))  # the noise is fair


@pytest.mark.statistical
@pytest.mark.parametrize("variance,expected", [("fixed_beta_tilde", 0.19630), ("fixed_beta", 0.20093)])
def test_diffusers_ddpm_over_all_1000_steps_is_ancestral_sampling_with_the_runs_variance(registry, variance, expected):
    """The reference closed forms: ancestral sampling ends at std 0.19630 with sigma^2 = beta-tilde and
    0.20093 with beta (the run's variance becomes DDPMScheduler's fixed_small / fixed_large)."""
    mean, std = moments(registry, "diffusers-ddpm", 1000, variance=variance)
    assert abs(mean - oracle.M) < 4 * oracle.S / math.sqrt(N)
    assert abs(std - expected) < 4 * SE_STD  # the two figures are 6 standard errors apart


@pytest.mark.statistical
@pytest.mark.parametrize("name,few,many", [("diffusers-euler-ancestral", 50, 1000),
                                           pytest.param("diffusers-kdpm2-ancestral", 50, 1000,
                                                        marks=pytest.mark.slow),  # 2 s: 2 x 1,050 steps
                                           ("diffusers-sde-dpm-solver++", 10, 250)])
def test_ancestral_schedulers_approach_the_data_std_as_steps_grow(registry, name, few, many):
    """Stochastic solvers under-disperse at few steps (the SDE DPM-Solver++ ends at std 0.096 after
    10 steps, 0.143 after 20) and reach the data's 0.2 as steps grow."""
    _, s_few = moments(registry, name, few)
    _, s_many = moments(registry, name, many)
    assert abs(s_many - oracle.S) < abs(s_few - oracle.S) and abs(s_many - oracle.S) < 0.01


def test_a_multistep_solver_whose_timesteps_repeat_is_refused_before_it_samples_nan(registry):
    """DPM-Solver++ over all T = 1000 steps with linspace spacing repeats timesteps (a zero step:
    NaN from step 498 on); the run is refused with the fix, and the fix samples the data's std."""
    d = make_diffusion(registry, T=1000, variance="fixed_beta_tilde")
    with pytest.raises(DdpmKitError, match="1000 steps with timestep_spacing 'linspace' repeat timesteps in "
                                           "DPMSolverMultistepScheduler; use fewer steps or options = "):
        registry.build("sampler", "diffusers-dpm-solver++", {"steps": 1000}, num_timesteps=1000, diffusion=d)
    sampler = registry.build("sampler", "diffusers-dpm-solver++",
                             {"steps": 1000, "options": {"timestep_spacing": "trailing"}}, num_timesteps=1000,
                             diffusion=d)
    x = sampler(d, oracle.EpsOracle(d.betas.numpy()), torch.randn(256, 1, 4, 4, dtype=torch.float64,
                                                                  generator=torch.Generator().manual_seed(0)))
    assert torch.isfinite(x).all() and abs(x.std().item() - oracle.S) < 4 * oracle.S / math.sqrt(2 * 256 * 16)


def test_images_of_a_stochastic_scheduler_follow_their_own_generators(registry):
    """Per-image noise reaches diffusers' randn_tensor (one generator per image)."""
    from ddpm_kit.noise import ImageNoise

    d = make_diffusion(registry, T=1000)
    sampler = registry.build("sampler", "diffusers-euler-ancestral", {"steps": 20}, num_timesteps=1000)
    model = oracle.EpsOracle(d.betas.numpy())

    def draw(indices):
        noise = ImageNoise(7, indices)
        return sampler(d, model, noise(torch.empty(len(indices), 1, 4, 4, dtype=torch.float64)), noise=noise)

    whole = draw(range(6))
    torch.testing.assert_close(torch.cat([draw(range(0, 2)), draw(range(2, 6))]), whole, rtol=0, atol=1e-12)


def test_diffusers_ddim_is_ddim_pipeline_on_the_same_noise(registry):
    from diffusers import DDIMPipeline
    from diffusers.utils.torch_utils import randn_tensor

    d = make_diffusion(registry, T=1000)
    torch.manual_seed(0)
    net = registry.build("backbone", "unet2d", {"preset": "cpu-tiny"}, in_channels=1, out_channels=1, image_size=8)
    net.eval()
    sampler = registry.build("sampler", "diffusers-ddim", {"steps": 20}, num_timesteps=1000)
    pipe = DDIMPipeline(unet=net.unet, scheduler=sampler.scheduler(d))
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=3, generator=torch.Generator().manual_seed(5), num_inference_steps=20,
                  output_type="np").images  # [B, H, W, C] in [0, 1]
    x_T = randn_tensor((3, 1, 8, 8), generator=torch.Generator().manual_seed(5))
    ours = sampler(d, net, x_T)
    ours = (ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours - theirs).max() < 1e-5
    assert np.abs(theirs - theirs.mean()).max() > 0.05  # not a constant image


@pytest.mark.parametrize("case,message", [("mu", "predicts 'mu'"), ("learned", "learned variance")])
def test_runs_a_scheduler_cannot_express_are_refused_naming_the_samplers_that_can(registry, case, message):
    from ddpm_kit.engine import build_components
    from ddpm_kit.recipe import load_recipe

    overrides = ["sample.sampler.name=\"diffusers-unipc\""]
    overrides += ["diffusion.parameterization.name=\"mu\""] if case == "mu" else [
        "diffusion.variance.name=\"learned\"", "objective.name=\"vlb\""]
    recipe, _ = load_recipe(TINY, registry, overrides)
    with pytest.raises(DdpmKitError, match=rf"sample\.sampler: .*{message}.*samplers that can: ancestral"):
        build_components(recipe, registry, str(TINY))


@pytest.mark.slow
def test_sample_command_takes_a_sampler_and_steps(finished_run):
    run, _ = finished_run
    result = cli("sample", str(run), "-n", "4", "--sampler", "diffusers-dpm-solver++", "--steps", "10",
                      "--name", "dpm10")
    assert result.returncode == 0, result.stderr
    assert np.load(run / "samples" / "dpm10.npz")["images"].shape == (4, 1, 8, 8)
    result = cli("sample", str(run), "-n", "4", "--steps", "10")
    assert result.returncode == 2 and "sampler 'ancestral' has no parameter 'steps'" in result.stderr


@pytest.mark.slow
def test_evaluate_one_metric_with_another_sampler_keeps_the_runs_metrics(finished_run):
    import json

    run, _ = finished_run
    before = (run / "eval" / "metrics.json").read_text()
    result = cli("evaluate", str(run), "--metric", "fid", "--num-samples", "6", "--sampler", "diffusers-ddim",
                      "--steps", "5")
    assert result.returncode == 0, result.stderr
    figures = json.loads((run / "eval" / "fid_diffusers-ddim-5.json").read_text())
    assert figures["fid_samples"] == 6 and figures["sampler"] == "diffusers-ddim-5" and figures["fid"] > 0
    samples = np.load(run / "samples" / "eval_6_diffusers-ddim-5.npz")["images"]
    assert samples.shape == (6, 1, 8, 8)
    assert not np.array_equal(samples, np.load(run / "samples" / "final.npz")["images"][:6])  # drawn anew
    assert (run / "eval" / "metrics.json").read_text() == before
    result = cli("evaluate", str(run), "--num-samples", "6")
    assert result.returncode == 2 and "--num-samples needs --metric" in result.stderr


# -- the callback contract, as the engine reads it -----------------------------------------------

@pytest.mark.slow
def test_a_sampler_that_never_calls_back_still_samples(faulty, run_copy):
    result = cli("sample", str(run_copy), "-n", "4", "--sampler", "silent")
    assert result.returncode == 0, result.stderr
    assert np.load(run_copy / "samples" / "final_silent.npz")["images"].shape == (4, 1, 8, 8)  # not over final
    assert not (run_copy / "samples" / "final_silent_progressive.png").exists()
    assert "no progressive grid: the sampler reported no steps" in result.stdout


@pytest.mark.slow
def test_a_sampler_that_reports_timesteps_is_warned_and_its_reports_counted(faulty, run_copy):
    result = cli("sample", str(run_copy), "-n", "4", "--sampler", "timesteps", "--steps", "5")
    assert result.returncode == 0, result.stderr
    assert ("warning: sampler 'timesteps' breaks the callback contract: it reported i=37 after i=49 (the i of "
            "ddpm_kit.api.Sampler counts the steps left, down to 0)") in result.stderr
    assert Image.open(run_copy / "samples" / "final_timesteps-5_progressive.png").size[0] > 0


def test_the_progressive_grid_follows_what_a_sampler_reports():
    """Kept contract: 10 columns at the evenly spaced steps of the countdown (the paper's Fig. 6);
    broken contract: the reports it made, thinned as they come (memory stays bounded), always
    ending with its last report."""
    from ddpm_kit.engine.sampling import ProgressiveChain

    def chain(reports):
        c = ProgressiveChain(images=1)
        for n, i in enumerate(reports):
            c({"i": i, "x0_hat": torch.full((1, 1, 2, 2), -1 + 2 * n / max(len(reports) - 1, 1))})
        return c

    honest = chain(range(49, -1, -1))
    assert sorted(honest.snapshots) == [49 - round(v) for v in np.linspace(49, 0, 10)]  # report numbers
    assert honest.grid_rows().shape == (1, 10, 1, 2, 2)
    assert chain([49, 37, 24, 12, 0]).grid_rows().shape[1] == 5
    long = chain([999 - 3 * k for k in range(300)])  # 300 reports of timesteps
    assert len(long.snapshots) <= 40 and 299 in long.snapshots and long.grid_rows().shape[1] == 10
    assert long.grid_rows()[0, -1].float().mean() == 255  # the last report (x0_hat = +1) closes the row
    assert chain([]).grid_rows() is None


@pytest.mark.slow
def test_a_sampler_that_raises_is_named_in_one_line(faulty, run_copy):
    result = cli("sample", str(run_copy), "-n", "4", "--sampler", "raising")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: sampler 'raising' (plugin 'faulty', ddpm-kit-faulty 0.1.0) failed while sampling: RuntimeError: "
        "boom in the sampler (run with --debug for the plugin's traceback)")
    from ddpm_kit.errors import PluginError

    with pytest.raises(PluginError) as raised:  # --debug: the traceback, down to the plugin's own exception
        cli("--debug", "sample", str(run_copy), "-n", "4", "--sampler", "raising")
    assert isinstance(raised.value.__cause__, RuntimeError) and str(raised.value.__cause__) == "boom in the sampler"
