"""v-prediction and min-SNR-gamma weighting as a ddpm-kit plugin, using only the public plugin API."""

from ddpm_kit.api import hookimpl

from .objectives import MinSNR
from .parameterizations import VPrediction


@hookimpl
def register_parameterizations(register):
    register("v", VPrediction)


@hookimpl
def register_objectives(register):
    register("min_snr", MinSNR)
