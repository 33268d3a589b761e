"""Improved DDPM (Nichol & Dhariwal 2021) as a ddpm-kit plugin, using only the public plugin API."""

import ddpm_kit

from .objectives import Hybrid, ImportanceSampledVLB
from .samplers import ddim, respaced
from .schedules import cosine
from .variances import LearnedRange


@ddpm_kit.hookimpl
def register_schedules(register):
    register("cosine", cosine)


@ddpm_kit.hookimpl
def register_variances(register):
    register("learned_range", LearnedRange)


@ddpm_kit.hookimpl
def register_objectives(register):
    register("hybrid", Hybrid)
    register("vlb_importance", ImportanceSampledVLB)


@ddpm_kit.hookimpl
def register_samplers(register):
    register("ddim", ddim)
    register("respaced", respaced)
