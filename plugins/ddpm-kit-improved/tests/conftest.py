import functools
import sys
from pathlib import Path

import pytest

# the analytic Gaussian oracle lives with ddpm-kit's own tests
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))


@pytest.fixture
def registry():
    from ddpm_kit.plugins import get_registry

    registry = get_registry()
    assert registry.resolve("schedule", "cosine").plugin.distribution == "ddpm-kit-improved"
    return registry


@pytest.fixture
def diffusion(registry):
    """make_diffusion (tests/helpers.py) on the registry with this plugin: diffusion(schedule=...,
    parameterization=..., variance=..., T=...)."""
    from helpers import make_diffusion

    return functools.partial(make_diffusion, registry)
