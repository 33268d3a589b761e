"""ddpm_kit.testing, the public test kit: its contract checks pass the built-ins and catch what they
exist to catch (a sampler that ignores its noise, miscounts its steps or misses the moments; a
schedule whose alpha-bar grows; an objective without gradients); and the suite's own machinery:
work started in the background gets the CPU the tests leave idle."""

import sys

import pytest
import torch

from ddpm_kit.api import Objective
from ddpm_kit.interfaces import Schedule
from ddpm_kit.testing import (assert_objective_contract, assert_sampler_contract, assert_schedule_contract,
                              diffusion, oracle, train_tiny_run)
from helpers import Started, low_priority_group


def test_the_builtin_schedules_and_objectives_keep_their_contracts(registry):
    for name in registry.names("schedule"):
        assert_schedule_contract(registry.build("schedule", name, {"T": 100}), 100)
    assert_objective_contract(registry.build("objective", "simple"), diffusion(registry, T=50), keys=("loss", "mse"))
    assert_objective_contract(registry.build("objective", "vlb"), diffusion(registry, variance="learned", T=50),
                              keys=("loss", "vb"))


@pytest.mark.slow
def test_ancestral_sampling_keeps_the_sampler_contract_at_the_oracles_exact_moments(registry):
    d = diffusion(registry, variance="fixed_beta")
    expected = oracle.sampled_moments(d.betas.numpy(), "fixed_beta")
    assert_sampler_contract(registry.build("sampler", "ancestral"), d, steps=1000, expected=expected)


def test_the_sampler_contract_catches_broken_samplers(registry):
    d = diffusion(registry, T=20)

    def reports(callback, steps, x):
        for i in steps:
            if callback is not None:
                callback({"i": i, "x": x, "x0_hat": x})

    def ignores_noise(d, model, x_T, *, generator=None, callback=None, noise=None):
        reports(callback, reversed(range(3)), x_T)
        return torch.randn(x_T.shape, dtype=x_T.dtype)

    def counts_up(d, model, x_T, *, generator=None, callback=None, noise=None):
        reports(callback, range(3), x_T)
        return x_T

    def the_prior(d, model, x_T, *, generator=None, callback=None, noise=None):  # x_T ~ N(0, 1) is no sample
        reports(callback, [0], x_T)
        return x_T.clone()

    for sampler, message in ((ignores_noise, "the same noise gave other images"), (counts_up, "count the steps left"),
                             (the_prior, "sample (mean|std)")):
        with pytest.raises(AssertionError, match=message):
            assert_sampler_contract(sampler, d, images=32)
    with pytest.raises(AssertionError, match="3 reports for 4 steps"):
        assert_sampler_contract(lambda *a, **k: ignores_noise(*a, **k), d, steps=4, images=4)


def test_the_schedule_and_objective_contracts_catch_what_they_check():
    with pytest.raises(AssertionError, match="alpha-bar must lie in"):
        assert_schedule_contract(Schedule(torch.tensor([1e-300, 0.5, 0.5], dtype=torch.float64)), 3)
    with pytest.raises(AssertionError, match="returns ddpm_kit.api.Schedule"):
        assert_schedule_contract(torch.full((3,), 0.1), 3)
    with pytest.raises(AssertionError, match="3 betas for T = 4"):
        assert_schedule_contract(Schedule(torch.full((3,), 0.1, dtype=torch.float64)), 4)

    class NoGradient(Objective):
        def losses(self, d, model, x0, t, noise):
            return {"loss": (x0 * 0).mean((1, 2, 3)), "mse": x0.mean((1, 2, 3))}

    with pytest.raises(AssertionError, match="no gradient"):
        assert_objective_contract(NoGradient(), keys=("loss", "mse"))
    with pytest.raises(AssertionError, match="'vb' is not a per-example"):
        assert_objective_contract(NoGradient(), keys=("loss", "vb"))


@pytest.mark.slow
def test_train_tiny_run_trains_into_the_folder_and_names_a_failure(tmp_path):
    run = train_tiny_run(tmp_path / "run", "train.steps=2", sample=False)
    assert (run / "model" / "ema.safetensors").is_file() and not (run / "samples").exists()
    with pytest.raises(AssertionError, match="train.stpes"):
        train_tiny_run(tmp_path / "bad", "train.stpes=2")


def test_a_command_started_in_the_background_runs_in_the_low_priority_group(tmp_path):
    group = low_priority_group()
    if group is None:
        pytest.skip("no cpu cgroup (v1) can be made here: the background shares the CPUs alike")
    assert (group / "cpu.shares").read_text().strip() == "102"
    started = Started([sys.executable, "-c", "import time; time.sleep(0.3); print(open('/proc/self/cgroup').read())"],
                      tmp_path / "log")
    cgroups = started.result().stdout.splitlines()
    assert any(line.split(":")[1:] == ["cpu", f"/{group.name}"] for line in cgroups), cgroups
