"""A plugin that provides a schedule named 'linear', which the built-ins provide too."""

import torch

import ddpm_kit
from ddpm_kit.interfaces import Schedule


def linear(T: int = 1000) -> Schedule:
    return Schedule(torch.full((T,), 0.5, dtype=torch.float64))


@ddpm_kit.hookimpl
def register_schedules(register):
    register("linear", linear)
