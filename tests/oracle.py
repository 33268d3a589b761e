"""The analytic Gaussian oracle (BRIEF.md): for data x0 ~ N(m, s^2) per pixel the optimal
eps-predictor is eps*(x_t, t) = sqrt(1-ab)(x_t - sqrt(ab) m)/(ab s^2 + 1 - ab).

Everything here is written in float64 numpy from the paper's equations, independently of
ddpm_kit's own code, so tests can hold the library against it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import special, stats

M, S = 0.1, 0.2


def linear_betas(T: int = 1000) -> np.ndarray:
    return np.linspace(1e-4, 0.02, T, dtype=np.float64)


class EpsOracle(torch.nn.Module):
    """A 'backbone' that outputs the exact optimal prediction, converted to a parameterization."""

    def __init__(self, betas: np.ndarray, param: str = "eps", m: float = M, s: float = S,
                 extra_channels: int = 0) -> None:
        super().__init__()
        ab = np.cumprod(1 - betas)
        ab_prev = np.append(1.0, ab[:-1])
        self.ab = torch.tensor(ab)
        self.c1 = torch.tensor(betas * np.sqrt(ab_prev) / (1 - ab))
        self.c2 = torch.tensor((1 - ab_prev) * np.sqrt(1 - betas) / (1 - ab))
        self.param, self.m, self.s, self.extra = param, m, s, extra_channels

    def forward(self, x, t):
        ab = self.ab[t].to(x.dtype).view(-1, 1, 1, 1)
        eps = torch.sqrt(1 - ab) * (x - torch.sqrt(ab) * self.m) / (ab * self.s**2 + 1 - ab)
        x0 = (x - torch.sqrt(1 - ab) * eps) / torch.sqrt(ab)
        out = {"eps": eps, "x0": x0,
               "mu": self.c1[t].to(x.dtype).view(-1, 1, 1, 1) * x0 + self.c2[t].to(x.dtype).view(-1, 1, 1, 1) * x}[self.param]
        if self.extra:
            out = torch.cat([out, torch.zeros_like(out[:, : self.extra])], dim=1)
        return out


def _coefficients(betas: np.ndarray, m: float, s2: float):
    """Per-step affine map of the oracle's reverse step: mu = A x_t + B (data variance s2)."""
    ab = np.cumprod(1 - betas)
    ab_prev = np.append(1.0, ab[:-1])
    c1 = betas * np.sqrt(ab_prev) / (1 - ab)
    c2 = (1 - ab_prev) * np.sqrt(1 - betas) / (1 - ab)
    # x0_hat = E[x0 | x_t] = m + sqrt(ab) s2 / (ab s2 + 1 - ab) (x_t - sqrt(ab) m)
    g = np.sqrt(ab) * s2 / (ab * s2 + 1 - ab)
    a_x0, b_x0 = g, m - g * np.sqrt(ab) * m
    return ab, ab_prev, c1, c2, a_x0, b_x0


def sigma2(betas: np.ndarray, variance: str) -> np.ndarray:
    ab = np.cumprod(1 - betas)
    ab_prev = np.append(1.0, ab[:-1])
    tilde = betas * (1 - ab_prev) / (1 - ab)
    return {"fixed_beta_tilde": tilde, "fixed_beta": betas}[variance]


def sampled_moments(betas: np.ndarray, variance: str, m: float = M, s: float = S) -> tuple[float, float]:
    """Mean and std of ancestral samples: iterate M <- A M + B, V <- A^2 V + sigma^2 from N(0, 1)."""
    ab, ab_prev, c1, c2, a_x0, b_x0 = _coefficients(betas, m, s**2)
    A, B = c1 * a_x0 + c2, c1 * b_x0
    var = sigma2(betas, variance)
    mean, v = 0.0, 1.0
    for t in reversed(range(len(betas))):
        mean, v = A[t] * mean + B[t], A[t] ** 2 * v + (var[t] if t > 0 else 0.0)
    return mean, math.sqrt(v)


def quantized_distribution(m: float = M, s: float = S, bits: int = 8):
    """Grid values in [-1, 1] and their probabilities for N(m, s^2) rounded to 2^bits levels."""
    n = 2**bits - 1
    grid = np.arange(n + 1) / n * 2 - 1
    edges = np.concatenate([[-np.inf], (grid[:-1] + grid[1:]) / 2, [np.inf]])
    p = np.diff(stats.norm.cdf(edges, loc=m, scale=s))
    return grid, p


def quantize(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    n = 2**bits - 1
    return torch.round((x.clamp(-1, 1) + 1) / 2 * n) / n * 2 - 1


def entropy_bpd(m: float = M, s: float = S) -> float:
    _, p = quantized_distribution(m, s)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def _approx_cdf(x):
    return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _discretized_loglik(x, mean, log_scale, exact: bool = False):
    cdf = stats.norm.cdf if exact else _approx_cdf
    inv = np.exp(-log_scale)
    cp, cm = cdf(inv * (x - mean + 1 / 255)), cdf(inv * (x - mean - 1 / 255))
    return np.where(x < -0.999, np.log(np.maximum(cp, 1e-12)),
                    np.where(x > 0.999, np.log(np.maximum(1 - cm, 1e-12)), np.log(np.maximum(cp - cm, 1e-12))))


def expected_bound(betas: np.ndarray, variance: str, m: float = M, s: float = S,
                   exact_cdf: bool = True) -> dict[str, float]:
    """E[L_T + sum L_{t-1} + L_0] in bits/dim for 8-bit quantized N(m, s^2) data and the oracle.

    The oracle's x0-hat is linear in x_t, so E(x0 - x0_hat)^2 depends only on the quantized
    data's first two moments (exact); L_0 is integrated by Gauss-Hermite quadrature.
    """
    grid, p = quantized_distribution(m, s)
    mq = float((grid * p).sum())
    vq = float(((grid - mq) ** 2 * p).sum())
    ab, ab_prev, c1, c2, a_x0, b_x0 = _coefficients(betas, m, s**2)
    tilde = betas * (1 - ab_prev) / (1 - ab)
    log_tilde = np.log(np.append(tilde[1], tilde[1:]))
    log_sig = {"fixed_beta_tilde": log_tilde, "fixed_beta": np.log(np.append(tilde[1], betas[1:]))}[variance]
    # x0_hat - x0 = (a sqrt(ab) - 1) x0 + a sqrt(1-ab) eps + b  -> its second moment
    bias = (a_x0 * np.sqrt(ab) - 1) * mq + b_x0
    mse = (a_x0 * np.sqrt(ab) - 1) ** 2 * vq + a_x0**2 * (1 - ab) + bias**2
    kl = 0.5 * (log_sig - log_tilde + np.exp(log_tilde - log_sig) - 1 + c1**2 * mse / np.exp(log_sig))
    prior = 0.5 * (-np.log(1 - ab[-1]) + (1 - ab[-1]) + ab[-1] * (vq + mq**2) - 1)
    # L_0: x_1 = sqrt(ab0) x0 + sqrt(1-ab0) eps, mean = x0_hat(x_1) (c1 = 1, c2 = 0 at index 0)
    z, w = special.roots_hermitenorm(80)
    w = w / w.sum()
    x0 = grid[:, None]
    mean0 = a_x0[0] * (np.sqrt(ab[0]) * x0 + np.sqrt(1 - ab[0]) * z[None, :]) + b_x0[0]
    l0 = -(p[:, None] * w[None, :] * _discretized_loglik(x0, mean0, 0.5 * log_sig[0], exact_cdf)).sum()
    ln2 = np.log(2)
    terms = {"prior": prior / ln2, "L0": l0 / ln2, "kl": kl[1:].sum() / ln2}
    terms["total"] = terms["prior"] + terms["L0"] + terms["kl"]
    return terms
