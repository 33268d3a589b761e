"""ddpm-kit-huber on its own, installed (`pip install .` then `pytest tests`): ddpm_kit.testing only."""

import pytest

from ddpm_kit.api import DdpmKitError, get_registry
from ddpm_kit.testing import assert_objective_contract, diffusion


def test_huber_keeps_the_objective_contract_with_its_documented_keys():
    assert_objective_contract(get_registry().build("objective", "huber", {"delta": 0.5}), keys=("loss", "mse"))


def test_a_learned_variance_is_refused_before_training():
    registry = get_registry()
    with pytest.raises(DdpmKitError, match="cannot train variance 'learned'"):
        registry.build("objective", "huber").validate_diffusion(diffusion(registry, variance="learned", T=10))
