"""ddpm-kit-heun on its own, installed (`pip install .` then `pytest tests`): ddpm_kit.testing only."""

import pytest

from ddpm_kit.api import DdpmKitError, get_registry
from ddpm_kit.testing import assert_sampler_contract, diffusion


def test_heun_keeps_the_sampler_contract_and_reaches_the_data_distribution():
    """On the Gaussian oracle, 20 Heun steps land on N(m, s^2) within 5 Monte-Carlo standard
    errors plus 0.01 of discretization bias."""
    registry = get_registry()
    d = diffusion(registry, variance="fixed_beta_tilde")
    heun = registry.build("sampler", "heun", {"steps": 20}, num_timesteps=d.num_timesteps, diffusion=d)
    assert_sampler_contract(heun, d, steps=20, tolerance=0.01)


def test_more_steps_than_the_schedule_has_are_refused():
    with pytest.raises(DdpmKitError, match="steps must lie in 1..50"):
        get_registry().build("sampler", "heun", {"steps": 51}, num_timesteps=50)
