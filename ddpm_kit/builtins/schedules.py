"""Ho et al.'s beta schedules (diffusion_utils_2.get_beta_schedule), for any T."""

from __future__ import annotations

import torch

from ..hookspecs import hookimpl
from ..interfaces import Schedule


def linear(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """beta_t linear from beta_start to beta_end: the paper's schedule (section 4)."""
    return Schedule(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))


def quad(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """sqrt(beta_t) linear (diffusers' "scaled_linear")."""
    return Schedule(torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2)


def const(T: int = 1000, beta_end: float = 0.02) -> Schedule:
    """beta_t = beta_end for every t."""
    return Schedule(torch.full((T,), beta_end, dtype=torch.float64))


def jsd(T: int = 1000) -> Schedule:
    """beta_t = 1/T, 1/(T-1), ..., 1 (Sohl-Dickstein et al.)."""
    return Schedule(1.0 / torch.linspace(T, 1, T, dtype=torch.float64))


def warmup(T: int, beta_start: float, beta_end: float, fraction: float) -> Schedule:
    """Linear from beta_start to beta_end over the first ``fraction`` of steps, then constant."""
    betas = torch.full((T,), beta_end, dtype=torch.float64)
    n = int(T * fraction)
    betas[:n] = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    return Schedule(betas)


def warmup10(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    return warmup(T, beta_start, beta_end, 0.1)


def warmup50(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    return warmup(T, beta_start, beta_end, 0.5)


@hookimpl
def register_schedules(register):
    for factory in (linear, quad, const, jsd, warmup10, warmup50):
        register(factory.__name__, factory)
