"""Learned-range variance (Nichol & Dhariwal 2021, eq. 15)."""

import torch

from ddpm_kit.api import LearnedVariance


class LearnedRange(LearnedVariance):
    """Sigma = exp(v log beta_t + (1 - v) log beta-tilde_t), v = (output + 1) / 2 from C extra channels."""

    name = "learned_range"
    diffusers_variance_type = "learned_range"  # improved-diffusion's interpolation, as diffusers reads it

    def log_variance(self, d, var_output, x_t, t):
        min_log = d.gather("posterior_log_variance_clipped", t, x_t)
        max_log = torch.log(d.gather("betas", t, x_t))
        frac = (var_output + 1) / 2
        return frac * max_log + (1 - frac) * min_log
