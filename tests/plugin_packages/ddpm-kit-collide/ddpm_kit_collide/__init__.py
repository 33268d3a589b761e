"""A plugin that offers a schedule named 'linear', which the built-ins offer too (it is shadowed:
recipes keep the built-in), and one named 'sigmoid', which ddpm-kit-example offers too (a recipe
that says 'sigmoid' must say which)."""

import torch

import ddpm_kit
from ddpm_kit.interfaces import Schedule


def linear(T: int = 1000) -> Schedule:
    return Schedule(torch.full((T,), 0.5, dtype=torch.float64))


def sigmoid(T: int = 1000) -> Schedule:
    return Schedule(torch.full((T,), 0.25, dtype=torch.float64))


@ddpm_kit.hookimpl
def register_schedules(register):
    register("linear", linear)
    register("sigmoid", sigmoid)
