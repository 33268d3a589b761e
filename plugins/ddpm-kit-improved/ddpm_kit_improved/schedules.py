"""The cosine schedule (Nichol & Dhariwal 2021, eq. 17)."""

import math

import torch

from ddpm_kit.api import Schedule


def cosine(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """alpha-bar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2); beta_t clipped at max_beta."""
    def alpha_bar(t: float) -> float:
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar(i + 1) / alpha_bar(i), max_beta) for i in range(T)]
    return Schedule(torch.tensor(betas, dtype=torch.float64))
