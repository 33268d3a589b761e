import functools

import pytest


@pytest.fixture
def registry():
    from ddpm_kit.plugins import get_registry

    registry = get_registry()
    assert registry.resolve("schedule", "cosine").plugin.distribution == "ddpm-kit-improved"
    return registry


@pytest.fixture
def diffusion(registry):
    """ddpm_kit.testing.diffusion on the registry with this plugin: diffusion(schedule=...,
    parameterization=..., variance=..., T=...)."""
    from ddpm_kit.testing import diffusion

    return functools.partial(diffusion, registry)
