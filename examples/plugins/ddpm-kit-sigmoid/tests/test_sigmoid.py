"""ddpm-kit-sigmoid on its own, installed (`pip install .` then `pytest tests`): ddpm_kit.testing only."""

import pytest
import torch

from ddpm_kit.api import DdpmKitError, get_registry
from ddpm_kit.testing import assert_schedule_contract


@pytest.mark.parametrize("T", [2, 10, 1000])
def test_the_schedule_keeps_the_schedule_contract(T):
    assert_schedule_contract(get_registry().build("schedule", "sigmoid", {"T": T}), T)


def test_the_betas_run_from_beta_start_to_beta_end_symmetrically():
    betas = get_registry().build("schedule", "sigmoid", {"T": 100, "beta_start": 1e-4, "beta_end": 0.02}).betas
    assert betas[0].item() == pytest.approx(1e-4, abs=1e-15) and betas[-1].item() == pytest.approx(0.02, abs=1e-15)
    torch.testing.assert_close(betas + betas.flip(0), torch.full_like(betas, 1e-4 + 0.02), rtol=0, atol=1e-15)


def test_a_bad_parameter_is_refused_when_the_recipe_is_checked():
    with pytest.raises(DdpmKitError):
        get_registry().validate("schedule", "sigmoid", {"beta_start": 0.5, "beta_end": 0.1})
