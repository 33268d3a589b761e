"""The public plugin API: every name a plugin package needs, in one module.

Write plugins against ``ddpm_kit.api`` only (``from ddpm_kit.api import hookimpl, Schedule, ...``);
every other module of ddpm_kit is internal and may change between releases. docs/writing-a-plugin.md
documents each name; tests/test_api.py fails when a documented name disappears from here or a name
here goes undocumented.

Hooks and registration
    hookimpl                 marks a module's ``register_<kind>s(register)`` functions
    get_registry             the registry of every installed component (for a plugin's tests)
Interfaces (what a factory returns)
    Schedule, Parameterization, VarianceChoice, LearnedVariance, Decoder, Sampler, Objective,
    Metric, Model, CannotSample
The diffusion a sampler, objective or metric is handed
    GaussianDiffusion, PMeanVariance
What a metric is handed
    EvalContext
Helpers
    randn_like, NoiseSource  a sampler's Gaussian draws (one generator per image)
    spaced_timesteps, respace, on_original_timesteps   K-step samplers over a trained T-step chain
    sample_ancestral         Algorithm 2, to wrap or to run on a respaced diffusion
    mean_flat, normal_kl, discretized_gaussian_log_likelihood, approx_standard_normal_cdf
Errors
    DdpmKitError             a message for the user (bad parameters): one line, exit 2
    PluginError              what the engine raises when plugin code fails: names the plugin, exit 1
"""

from __future__ import annotations

from . import __version__
from .builtins.samplers import sample_ancestral
from .diffusion import GaussianDiffusion, PMeanVariance
from .engine.evaluation import EvalContext
from .errors import DdpmKitError, PluginError
from .gaussian import approx_standard_normal_cdf, discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .hookspecs import hookimpl
from .interfaces import (CannotSample, Decoder, LearnedVariance, Metric, Model, Objective, Parameterization, Sampler,
                         Schedule, VarianceChoice)
from .noise import NoiseSource, randn_like
from .plugins import get_registry
from .respacing import on_original_timesteps, respace, spaced_timesteps

__all__ = [
    "__version__",
    "hookimpl", "get_registry",
    "Schedule", "Parameterization", "VarianceChoice", "LearnedVariance", "Decoder", "Sampler", "Objective",
    "Metric", "Model", "CannotSample",
    "GaussianDiffusion", "PMeanVariance",
    "EvalContext",
    "randn_like", "NoiseSource", "spaced_timesteps", "respace", "on_original_timesteps", "sample_ancestral",
    "mean_flat", "normal_kl", "discretized_gaussian_log_likelihood", "approx_standard_normal_cdf",
    "DdpmKitError", "PluginError",
]
