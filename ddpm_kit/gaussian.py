"""Gaussian helpers for the variational bound (Ho et al. 2020, eq. 5 and section 3.3).

Pure tensor functions, free of models and I/O; names follow the reference implementation.
"""

from __future__ import annotations

import math

import torch

LN2 = math.log(2.0)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all non-batch dimensions."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of Phi(x) used by the reference code (and its published bits/dim)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor, *,
                                        bin_width: float = 2.0 / 255.0, exact_cdf: bool = False) -> torch.Tensor:
    """log p(x) of data on a grid in [-1, 1] under a Gaussian integrated over each bin (eq. 13).

    Bins are x +- bin_width/2; the edge bins (x = -1 and x = 1) extend to -inf / +inf. They are
    told apart by |x| > 1 - bin_width/2 (the reference code's fixed 0.999 holds only up to 10 bits).
    """
    cdf = torch.special.ndtr if exact_cdf else approx_standard_normal_cdf
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = cdf(inv_stdv * (centered + bin_width / 2))
    cdf_min = cdf(inv_stdv * (centered - bin_width / 2))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    edge = 1.0 - bin_width / 2
    return torch.where(x < -edge, log_cdf_plus, torch.where(x > edge, log_one_minus_cdf_min, log_cdf_delta))
