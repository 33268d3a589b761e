"""A plugin whose registration hook raises."""

import ddpm_kit


@ddpm_kit.hookimpl
def register_samplers(register):
    raise RuntimeError("cannot register today")
