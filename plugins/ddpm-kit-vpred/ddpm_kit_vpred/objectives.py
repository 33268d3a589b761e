"""Min-SNR-gamma loss weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
Weighting Strategy", eqs. 7-10)."""

from __future__ import annotations

import torch

from ddpm_kit.api import DdpmKitError, Objective, mean_flat

# The weight on each parameterization's MSE that makes it min(SNR, gamma) times the x0 MSE:
# ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2 and ||v - v_hat||^2 = (SNR + 1) ||x0 - x0_hat||^2.
WEIGHTS = {
    "x0": lambda snr, gamma: torch.clamp(snr, max=gamma),
    "eps": lambda snr, gamma: torch.clamp(snr, max=gamma) / snr,
    "v": lambda snr, gamma: torch.clamp(snr, max=gamma) / (snr + 1),
}


class MinSNR(Objective):
    """L_simple with each example's MSE weighted so that the loss is min(SNR_t, gamma) ||x0 - x0_hat||^2,
    SNR_t = abar_t / (1 - abar_t): the low-noise steps no longer dominate (gamma = 5 in the paper)."""

    name = "min_snr"

    def __init__(self, gamma: float = 5.0) -> None:
        if gamma <= 0:
            raise DdpmKitError(f"gamma must be positive, got {gamma}")
        self.gamma = gamma

    def validate_diffusion(self, d):
        if d.parameterization.name not in WEIGHTS:
            raise DdpmKitError(f"objective 'min_snr' weights the {', '.join(WEIGHTS)} parameterizations, not "
                               f"'{d.parameterization.name}'")
        if d.variance.learned:
            raise DdpmKitError(f"objective 'min_snr' cannot train variance '{d.variance.name}' (its channels get "
                               "no gradient); use a fixed variance")

    def weight(self, d, t: torch.Tensor) -> torch.Tensor:
        """min(SNR_t, gamma) over the parameterization's SNR factor, per example (float64)."""
        ab = d.alphas_cumprod.to(t.device)[t]
        return WEIGHTS[d.parameterization.name](ab / (1 - ab), self.gamma)

    def losses(self, d, model, x0, t, noise):
        x_t = d.q_sample(x0, t, noise)
        mean_part, _ = d.variance.split(d.model_output(model, x_t, t), x0.shape[1])
        mse = mean_flat((d.parameterization.target(d, x0, x_t, t, noise) - mean_part) ** 2)
        return {"loss": self.weight(d, t).to(mse.dtype) * mse, "mse": mse}
