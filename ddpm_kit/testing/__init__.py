"""ddpm-kit's test kit, public: what the project's own tests hold the built-ins to, for a plugin
package's tests (``from ddpm_kit.testing import ...``; pytest and nothing else besides ddpm-kit).

- ``oracle``: data x0 ~ N(M, S^2) per pixel in closed form: the exact optimal network, the moments
  of ancestral samples, the expected bound
- ``assert_*_contract``: what the engine relies on of a sampler, a schedule, an objective; each
  raises AssertionError saying what broke
- ``TINY``, ``train_tiny_run``, ``cli``, ``diffusion``, ``statistical_seed``, ``ancestral_samples``:
  a tiny run, the command line in this process, a diffusion from names, draws

Each name in a line: docs/writing-a-plugin.md, "Testing a plugin"."""

from . import oracle
from .contracts import assert_objective_contract, assert_sampler_contract, assert_schedule_contract
from .runs import TINY, ancestral_samples, cli, diffusion, statistical_seed, train_tiny_run

__all__ = ["oracle", "assert_sampler_contract", "assert_schedule_contract", "assert_objective_contract",
           "TINY", "train_tiny_run", "cli", "diffusion", "statistical_seed", "ancestral_samples"]
