"""A plugin with a misspelled hook name beside a valid one: the typo is reported with the hook it
resembles, and the valid hook still registers its schedule."""

import ddpm_kit


@ddpm_kit.hookimpl
def register_schedule(register):
    register("never", None)


@ddpm_kit.hookimpl
def register_samplers(register):
    register("typo_ok", lambda: (lambda diffusion, model, x_T, **kwargs: x_T))
