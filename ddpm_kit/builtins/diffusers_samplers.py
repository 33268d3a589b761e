"""diffusers' schedulers as sampler plugins (``diffusers-<name>``): DDIM, DPM-Solver++, UniPC, Euler,
Heun, DEIS, PNDM, LMS, KDPM2, ...

The schedulers' code stays in diffusers; this module adapts it: each is built from the run's exact
betas and its parameterization's ``diffusers_prediction_type`` (docs/sampling.md). diffusers is
imported only when a sampler is built, so listing plugins stays fast.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from ..errors import DdpmKitError
from ..hookspecs import hookimpl
from ..interfaces import CannotSample
from ..respacing import validate_steps

NAMES = {  # diffusers class -> sampler name
    "DDIMScheduler": "ddim", "DDPMScheduler": "ddpm", "PNDMScheduler": "pndm", "LMSDiscreteScheduler": "lms",
    "EulerDiscreteScheduler": "euler", "HeunDiscreteScheduler": "heun",
    "EulerAncestralDiscreteScheduler": "euler-ancestral", "DPMSolverMultistepScheduler": "dpm-solver++",
    "DPMSolverSinglestepScheduler": "dpm-solver-singlestep", "KDPM2DiscreteScheduler": "kdpm2",
    "KDPM2AncestralDiscreteScheduler": "kdpm2-ancestral", "DEISMultistepScheduler": "deis",
    "UniPCMultistepScheduler": "unipc",
}
VARIANTS = {  # sampler name -> (diffusers class, the options that make it): named settings users ask for
    # DPM-Solver++(2M) SDE (k-diffusion's "DPM++ 2M SDE"): stochastic, so it keeps part of what
    # ancestral sampling's noise corrects; the best few-step sampler on the quickstart (docs/sampling.md)
    "sde-dpm-solver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
}


def scheduler_class(class_name: str) -> type:
    """The installed diffusers' scheduler class, checked to take the run's betas and parameterization."""
    import diffusers

    cls = getattr(diffusers, class_name, None)
    params = inspect.signature(cls.__init__).parameters if cls is not None else {}
    if "trained_betas" not in params or "prediction_type" not in params:
        raise DdpmKitError(f"diffusers {diffusers.__version__} has no {class_name} that takes trained_betas and "
                           "prediction_type")
    return cls


class DiffusersSampler:
    """A diffusers scheduler driven by ddpm-kit's model and diffusion (the ``Sampler`` signature)."""

    def __init__(self, name: str, scheduler_class: type, steps: int, options: dict[str, Any]) -> None:
        self.name, self.scheduler_class, self.steps, self.options = name, scheduler_class, steps, options

    def scheduler(self, diffusion, device: torch.device | str | None = None):
        """The scheduler over the run's exact betas and parameterization, its ``steps`` timesteps set."""
        param = diffusion.parameterization
        if param.diffusers_prediction_type is None:
            raise CannotSample(f"sampler '{self.name}' needs a prediction diffusers knows (eps, x0, v), this run "
                               f"predicts '{param.name}'")
        if diffusion.variance.learned:
            raise CannotSample(f"sampler '{self.name}' cannot use the learned variance '{diffusion.variance.name}'")
        config = {"num_train_timesteps": diffusion.num_timesteps, "trained_betas": diffusion.betas.numpy(),
                  "prediction_type": param.diffusers_prediction_type, **self.options}
        accepted = inspect.signature(self.scheduler_class.__init__).parameters
        if "variance_type" in accepted and diffusion.variance.diffusers_variance_type:  # DDPMScheduler
            config.setdefault("variance_type", diffusion.variance.diffusers_variance_type)
        if "timestep_spacing" in accepted:
            config.setdefault("timestep_spacing", "linspace")  # from t = T-1 down to t = 0, as ancestral sampling
        unknown = sorted(set(config) - set(accepted))
        if unknown:
            raise DdpmKitError(f"sampler '{self.name}': {self.scheduler_class.__name__} takes no option "
                               f"{', '.join(unknown)}")
        scheduler = self.scheduler_class(**config)
        scheduler.set_timesteps(self.steps, device=device)
        timesteps = scheduler.timesteps.tolist()
        # a multistep solver (it has a solver_order; Heun, PNDM, KDPM2 repeat timesteps by design)
        # would divide by a zero step: NaN
        if "solver_order" in scheduler.config and len(set(timesteps)) < len(timesteps):
            raise DdpmKitError(
                f"sampler '{self.name}': {self.steps} steps with timestep_spacing "
                f"'{scheduler.config.get('timestep_spacing')}' repeat timesteps in {self.scheduler_class.__name__}; "
                "use fewer steps or options = { timestep_spacing = \"trailing\" }")
        return scheduler

    @torch.no_grad()
    def __call__(self, diffusion, model, x_T: torch.Tensor, *, generator: torch.Generator | None = None,
                 callback: Callable[[dict[str, Any]], None] | None = None, noise=None) -> torch.Tensor:
        scheduler = self.scheduler(diffusion, device=x_T.device)
        # stochastic schedulers draw with diffusers' randn_tensor, which takes one generator per image
        generators = getattr(noise, "generators", None) or generator
        x = x_T * scheduler.init_noise_sigma
        timesteps = scheduler.timesteps
        channels = x_T.shape[1]
        stochastic = "generator" in inspect.signature(scheduler.step).parameters
        for k, t in enumerate(timesteps):
            t_model = torch.full((x.shape[0],), int(round(float(t))), device=x.device, dtype=torch.long)
            x_t = scheduler.scale_model_input(x, t)  # the VP x_t the network was trained on
            output = diffusion.model_output(model, x_t, t_model)[:, :channels]
            result = scheduler.step(output, t, x, **({"generator": generators} if stochastic else {}))
            x = result.prev_sample
            if callback is not None:
                x0_hat = getattr(result, "pred_original_sample", None)
                if x0_hat is None:
                    x0_hat = diffusion.parameterization.predict_x0(diffusion, output, x_t, t_model)
                callback({"i": len(timesteps) - 1 - k, "x": x, "x0_hat": x0_hat})
        return x


def _factory(name: str, class_name: str, preset: dict[str, Any]):
    def make(steps: int = 50, options: dict[str, Any] | None = None, num_timesteps: int | None = None,
             diffusion=None) -> DiffusersSampler:
        validate_steps(steps, num_timesteps)
        sampler = DiffusersSampler(name, scheduler_class(class_name), steps, {**preset, **(options or {})})
        if diffusion is not None:
            sampler.scheduler(diffusion)  # refuse what the scheduler cannot express, before any training
        return sampler

    make.__doc__ = (f"diffusers' {class_name} over ``steps`` steps, built from the run's betas; ``options`` go "
                    "to the scheduler (e.g. { solver_order = 3 }).")
    return make


@hookimpl
def register_samplers(register):
    named = {name: (class_name, {}) for class_name, name in NAMES.items()}
    for name, (class_name, preset) in {**named, **VARIANTS}.items():
        register(f"diffusers-{name}", _factory(f"diffusers-{name}", class_name, preset))
