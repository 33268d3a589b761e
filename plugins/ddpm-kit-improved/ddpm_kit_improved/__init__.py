"""Improved DDPM (Nichol & Dhariwal 2021) as a ddpm-kit plugin, using only the public plugin API."""

from ddpm_kit.api import hookimpl

from .objectives import Hybrid, ImportanceSampledVLB
from .samplers import ddim, respaced
from .schedules import cosine
from .variances import LearnedRange


@hookimpl
def register_schedules(register):
    register("cosine", cosine)


@hookimpl
def register_variances(register):
    register("learned_range", LearnedRange)


@hookimpl
def register_objectives(register):
    register("hybrid", Hybrid)
    register("vlb_importance", ImportanceSampledVLB)


@hookimpl
def register_samplers(register):
    register("ddim", ddim)
    register("respaced", respaced)
