"""v-prediction and min-SNR-gamma weighting as a ddpm-kit plugin, using only the public plugin API."""

import ddpm_kit

from .objectives import MinSNR
from .parameterizations import VPrediction


@ddpm_kit.hookimpl
def register_parameterizations(register):
    register("v", VPrediction)


@ddpm_kit.hookimpl
def register_objectives(register):
    register("min_snr", MinSNR)
