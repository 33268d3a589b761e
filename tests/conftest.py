import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def registry():
    from ddpm_kit.plugins import get_registry

    return get_registry(entry_points=False)


def make_diffusion(registry, schedule="linear", parameterization="eps", variance="fixed_beta",
                   decoder="discretized_gaussian", T=1000, **decoder_params):
    from ddpm_kit.diffusion import GaussianDiffusion

    return GaussianDiffusion(
        registry.build("schedule", schedule, {"T": T}),
        registry.build("parameterization", parameterization),
        registry.build("variance", variance),
        registry.build("decoder", decoder, decoder_params),
    )


@pytest.fixture
def diffusion_factory(registry):
    def build(**kw):
        return make_diffusion(registry, **kw)

    torch.manual_seed(0)
    return build
