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
    from ddpm_kit.diffusion import GaussianDiffusion

    def build(schedule="linear", parameterization="eps", variance="fixed_beta", T=1000):
        return GaussianDiffusion(registry.build("schedule", schedule, {"T": T}),
                                 registry.build("parameterization", parameterization),
                                 registry.build("variance", variance), registry.build("decoder", "discretized_gaussian"))

    return build
