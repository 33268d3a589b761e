"""Samplers and metrics that get the contracts wrong, the ways plugin authors did: a sampler that
never calls its callback, one that reports timesteps instead of the steps left, one that raises;
metrics that reuse another metric's name, return a tensor, or raise."""

import torch

from ddpm_kit.api import hookimpl, respace, sample_ancestral, on_original_timesteps


def silent():
    """Ancestral sampling that never calls the callback."""
    def sample(diffusion, model, x_T, *, generator=None, callback=None, noise=None):
        return sample_ancestral(diffusion, model, x_T, generator=generator, noise=noise)
    return sample


def timesteps(steps: int = 5):
    """Respaced ancestral sampling that reports the original timestep as i (49, 37, ...)."""
    def sample(diffusion, model, x_T, *, generator=None, callback=None, noise=None):
        d, timestep_map = respace(diffusion, steps)

        def report(step):
            if callback is not None:
                callback({**step, "i": int(timestep_map[step["i"]])})
        return sample_ancestral(d, on_original_timesteps(model, timestep_map), x_T, generator=generator,
                                noise=noise, callback=report)
    return sample


def raising():
    def sample(diffusion, model, x_T, **kwargs):
        raise RuntimeError("boom in the sampler")
    return sample


class Clash:
    name = "clash"

    def compute(self, context):
        return {"bpd": 1.0}


class Tensorial:
    name = "tensorial"

    def compute(self, context):
        return {"tensorial_value": torch.ones(3)}


@hookimpl
def register_samplers(register):
    register("silent", silent)
    register("timesteps", timesteps)
    register("raising", raising)


@hookimpl
def register_metrics(register):
    register("clash", Clash)
    register("tensorial", Tensorial)
