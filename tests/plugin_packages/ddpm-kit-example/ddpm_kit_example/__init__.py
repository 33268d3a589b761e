"""A tiny third-party plugin: a sigmoid schedule and a `hello` command."""

import click
import torch

import ddpm_kit
from ddpm_kit.interfaces import Schedule


def sigmoid(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    s = torch.sigmoid(torch.linspace(-6, 6, T, dtype=torch.float64))
    return Schedule(beta_start + (beta_end - beta_start) * (s - s.min()) / (s.max() - s.min()))


@ddpm_kit.hookimpl
def register_schedules(register):
    register("sigmoid", sigmoid)


@ddpm_kit.hookimpl
def register_commands(cli):
    @cli.command()
    def hello():
        """Say hello from a plugin."""
        click.echo("hello from ddpm-kit-example")


def exploding(T: int = 10) -> Schedule:
    raise RuntimeError("the exploding schedule always fails")


@ddpm_kit.hookimpl
def register_decoders(register):
    register("exploding", exploding)
