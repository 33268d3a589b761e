"""A plugin with a misspelled hook name: an error, not a silent no-op."""

import ddpm_kit


@ddpm_kit.hookimpl
def register_schedule(register):
    register("never", None)
