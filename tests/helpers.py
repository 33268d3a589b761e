"""Helpers shared by the tests (fixtures live in conftest.py)."""

import os
import subprocess
import sys
from pathlib import Path

TINY = Path(__file__).parent / "recipes" / "tiny.toml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def make_diffusion(registry, schedule="linear", parameterization="eps", variance="fixed_beta",
                   decoder="discretized_gaussian", T=1000, **decoder_params):
    from ddpm_kit.diffusion import GaussianDiffusion

    return GaussianDiffusion(
        registry.build("schedule", schedule, {"T": T}),
        registry.build("parameterization", parameterization),
        registry.build("variance", variance),
        registry.build("decoder", decoder, decoder_params),
    )


def ddpm_kit(*args, **kw):
    """Run the CLI in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "ddpm_kit", *args], capture_output=True, text=True, env=ENV, **kw)
