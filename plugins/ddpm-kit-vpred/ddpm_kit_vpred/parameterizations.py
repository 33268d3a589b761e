"""v-prediction (Salimans & Ho 2022, "Progressive distillation", section 4 and appendix D)."""

from __future__ import annotations

import torch

from ddpm_kit.api import Parameterization


def _alpha_sigma(d, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_t = sqrt(abar_t) and sigma_t = sqrt(1 - abar_t), shaped to broadcast over ``like``."""
    return d.gather("sqrt_alphas_cumprod", t, like), d.gather("sqrt_one_minus_alphas_cumprod", t, like)


class VPrediction(Parameterization):
    """The network predicts v = alpha_t eps - sigma_t x0 (alpha_t^2 + sigma_t^2 = 1), so that
    x0 = alpha_t x_t - sigma_t v and eps = sigma_t x_t + alpha_t v. diffusers calls it
    ``v_prediction``; its L_simple target is diffusers' ``get_velocity(x0, eps, t)``."""

    name = "v"
    diffusers_prediction_type = "v_prediction"

    def from_x0(self, d, x0, x_t, t):
        alpha, sigma = _alpha_sigma(d, t, x_t)
        return alpha * d.eps_from_x0(x_t, t, x0) - sigma * x0

    def predict_x0(self, d, output, x_t, t):
        alpha, sigma = _alpha_sigma(d, t, x_t)
        return alpha * x_t - sigma * output

    def predict_eps(self, d, output, x_t, t):
        alpha, sigma = _alpha_sigma(d, t, x_t)
        return sigma * x_t + alpha * output

    def target(self, d, x0, x_t, t, noise):
        alpha, sigma = _alpha_sigma(d, t, x0)
        return alpha * noise - sigma * x0
