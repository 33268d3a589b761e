"""A sigmoid beta schedule: an example schedule plugin, written against ``ddpm_kit.api`` only."""

import torch

from ddpm_kit.api import DdpmKitError, Schedule, hookimpl


def check_sigmoid(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, width: float = 6.0) -> None:
    """Reject what the factory would reject, without building (``ddpm-kit recipe check`` calls it)."""
    if T < 2:
        raise DdpmKitError(f"schedule 'sigmoid' needs T >= 2, got {T}")
    if not 0 < beta_start <= beta_end <= 1:
        raise DdpmKitError(f"schedule 'sigmoid' needs 0 < beta_start <= beta_end <= 1, got {beta_start}, {beta_end}")
    if width <= 0:
        raise DdpmKitError(f"schedule 'sigmoid' needs width > 0, got {width}")


def sigmoid(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, width: float = 6.0) -> Schedule:
    """beta_t along a sigmoid over [-width, width], rescaled to run from beta_start to beta_end.

    beta_t = beta_start + (beta_end - beta_start) (s(x_t) - s(-width)) / (s(width) - s(-width)),
    x_t evenly spaced from -width to width (GeoDiff's schedule with exact endpoints): slow at both
    ends, fastest in the middle, symmetric (beta_t + beta_{T-1-t} = beta_start + beta_end).
    """
    check_sigmoid(T, beta_start, beta_end, width)
    s = torch.sigmoid(torch.linspace(-width, width, T, dtype=torch.float64))
    betas = beta_start + (beta_end - beta_start) * (s - s[0]) / (s[-1] - s[0])
    return Schedule(betas)


@hookimpl
def register_schedules(register):
    register("sigmoid", sigmoid, check=check_sigmoid)
