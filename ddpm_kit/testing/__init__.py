"""ddpm-kit's test kit, public: what the project's own tests hold the built-ins to, for a plugin
package's tests (``from ddpm_kit.testing import ...``; pytest and nothing else besides ddpm-kit).

The Gaussian oracle
    oracle                   data x0 ~ N(M, S^2) per pixel, in closed form: ``EpsOracle`` (the exact
                             optimal network for eps, x0 or mu), ``sampled_moments`` (ancestral samples'
                             mean and std), ``expected_bound`` (E[L] in bits/dim), ``sampled_bound_terms``,
                             ``guided_moments``, ``linear_betas``, ``quantize``
Contract checks (each raises AssertionError saying what broke)
    assert_sampler_contract      shape, the callback's countdown, the same noise -> the same images,
                                 the oracle's moments within a stated standard error
    assert_schedule_contract     betas in (0, 1], the length asked for, alpha-bar decreasing in (0, 1)
    assert_objective_contract    finite per-example loss and gradients, the documented keys
A tiny run, the command line, draws
    TINY                     a recipe small enough for tests (8x8 digits, a 0.2M-parameter UNet, T = 50)
    train_tiny_run           trains it (with overrides) into a folder, in this process, and returns the folder
    cli                      ``ddpm-kit ARGS`` in this process: exit status, stdout, stderr
    diffusion                a GaussianDiffusion from component names (built-ins or plugins)
    statistical_seed         a statistical test's seed, moved by $DDPM_KIT_TEST_SEED
    ancestral_samples        the oracle's ancestral draws (cached), for moment tests
"""

from . import oracle
from .contracts import assert_objective_contract, assert_sampler_contract, assert_schedule_contract
from .runs import TINY, ancestral_samples, cli, diffusion, statistical_seed, train_tiny_run

__all__ = ["oracle", "assert_sampler_contract", "assert_schedule_contract", "assert_objective_contract",
           "TINY", "train_tiny_run", "cli", "diffusion", "statistical_seed", "ancestral_samples"]
