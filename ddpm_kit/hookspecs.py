"""Hook specifications. A plugin implements any of these with ``@ddpm_kit.api.hookimpl``.

Each ``register_*`` hook receives ``register(name, factory)``. The factory is called with the
component's parameters from the recipe (validated against the factory's signature) and returns
the component. See docs/writing-a-plugin.md.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("ddpm_kit")
hookimpl = pluggy.HookimplMarker("ddpm_kit")


@hookspec
def register_schedules(register):
    """Register beta schedules: factory(**params) -> ddpm_kit.api.Schedule."""


@hookspec
def register_parameterizations(register):
    """Register what the network predicts: factory(**params) -> Parameterization."""


@hookspec
def register_variances(register):
    """Register reverse-process variance choices: factory(**params) -> VarianceChoice."""


@hookspec
def register_decoders(register):
    """Register L_0 decoders: factory(**params) -> Decoder."""


@hookspec
def register_samplers(register):
    """Register samplers: factory(**params) -> Sampler (a callable, see interfaces.Sampler); the
    engine also passes num_timesteps, diffusion, run_dir and registry to a factory that declares them."""


@hookspec
def register_objectives(register):
    """Register training objectives: factory(**params) -> Objective."""


@hookspec
def register_backbones(register):
    """Register networks: factory(in_channels, out_channels, image_size, **params) -> nn.Module; a
    class-conditional run also passes num_classes to a factory that declares it."""


@hookspec
def register_datasets(register):
    """Register datasets: factory(**params) -> datasets.DatasetDict with 'train'/'test' splits."""


@hookspec
def register_metrics(register):
    """Register evaluation metrics: factory(**params) -> Metric."""


@hookspec
def register_commands(cli):
    """Add click commands to the ``ddpm-kit`` command group."""
