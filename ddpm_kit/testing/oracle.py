"""The analytic Gaussian oracle: for data x0 ~ N(m, s^2) per pixel, everything about the diffusion of
Ho et al. (2020) is known in closed form. The optimal eps-predictor is
eps*(x_t, t) = sqrt(1 - ab) (x_t - sqrt(ab) m) / (ab s^2 + 1 - ab) (ab = alpha-bar_t); ancestral
sampling with it maps N(m_T, v_T) to a Gaussian whose moments follow an affine recursion; the
expected variational bound of 8-bit quantized data is a sum of Gaussian KLs plus the decoder term.

Everything here is written in float64 numpy from the paper's equations (eqs. 4-7, 11-13),
independently of ddpm_kit's diffusion code, so tests can hold the library (and a plugin) against it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

M, S = 0.1, 0.2
# With the linear schedule (1e-4 to 0.02, T = 1000), computed independently of this module: the std of
# ancestral samples and the expected bound in bits/dim (the reference code's tanh Phi), per sigma^2.
REFERENCE_STD = {"fixed_beta_tilde": 0.19630, "fixed_beta": 0.20093}
REFERENCE_BOUND = {"fixed_beta_tilde": 7.457, "fixed_beta": 6.844}


def linear_betas(T: int = 1000) -> np.ndarray:
    return np.linspace(1e-4, 0.02, T, dtype=np.float64)


class _Posterior(NamedTuple):
    """alpha-bar_t and the posterior q(x_{t-1} | x_t, x0) (eqs. 6-7): its mean's coefficients,
    mu~ = c1 x0 + c2 x_t, and its variance beta-tilde_t."""

    alpha_bar: np.ndarray
    c1: np.ndarray
    c2: np.ndarray
    variance: np.ndarray


def _posterior(betas: np.ndarray) -> _Posterior:
    ab = np.cumprod(1 - betas)
    ab_prev = np.append(1.0, ab[:-1])
    c1 = betas * np.sqrt(ab_prev) / (1 - ab)
    c2 = (1 - ab_prev) * np.sqrt(1 - betas) / (1 - ab)
    return _Posterior(ab, c1, c2, betas * (1 - ab_prev) / (1 - ab))


def _reverse_moments(A: np.ndarray, B: np.ndarray, var: np.ndarray) -> tuple[float, float]:
    """Mean and std of x_0 from x_T ~ N(0, 1) through x_{t-1} = A x_t + B + sigma z:
    M <- A M + B, V <- A^2 V + sigma^2 (no noise at the last step)."""
    mean, v = 0.0, 1.0
    for t in reversed(range(len(A))):
        mean, v = A[t] * mean + B[t], A[t] ** 2 * v + (var[t] if t > 0 else 0.0)
    return mean, math.sqrt(v)


class EpsOracle(torch.nn.Module):
    """A 'backbone' that outputs the exact optimal prediction, converted to a parameterization."""

    def __init__(self, betas: np.ndarray, param: str = "eps", m: float = M, s: float = S,
                 extra_channels: int = 0) -> None:
        super().__init__()
        ab, c1, c2, _ = _posterior(betas)
        self.ab, self.c1, self.c2 = torch.tensor(ab), torch.tensor(c1), torch.tensor(c2)
        self.param, self.m, self.s, self.extra = param, m, s, extra_channels

    def forward(self, x, t):
        if self.param not in ("eps", "x0", "mu"):
            raise KeyError(self.param)
        ab = self.ab[t].to(x.dtype).view(-1, 1, 1, 1)
        out = eps = torch.sqrt(1 - ab) * (x - torch.sqrt(ab) * self.m) / (ab * self.s**2 + 1 - ab)
        if self.param != "eps":  # only what the parameterization needs (the oracle runs at every step)
            out = x0 = (x - torch.sqrt(1 - ab) * eps) / torch.sqrt(ab)
            if self.param == "mu":
                out = self.c1[t].to(x.dtype).view(-1, 1, 1, 1) * x0 + self.c2[t].to(x.dtype).view(-1, 1, 1, 1) * x
        if self.extra:
            out = torch.cat([out, torch.zeros_like(out[:, : self.extra])], dim=1)
        return out


class ClassOracle(torch.nn.Module):
    """A class-conditional 'backbone': class k's data is N(means[k], stds[k]^2) per pixel, and the
    label-dropped branch (label -1) answers as if the data were N(null[0], null[1]^2): each row
    gets the exact optimal prediction of its own Gaussian."""

    def __init__(self, betas: np.ndarray, means, stds, null: tuple[float, float], param: str = "eps") -> None:
        super().__init__()
        self.classes = torch.nn.ModuleList(EpsOracle(betas, param, m, s) for m, s in zip(means, stds))
        self.null = EpsOracle(betas, param, *null)
        self.calls: list[torch.Tensor] = []

    def forward(self, x, t, class_labels):
        self.calls.append(class_labels.clone())
        out = torch.empty_like(x)
        for k in class_labels.unique().tolist():
            rows = class_labels == k
            out[rows] = (self.null if k == -1 else self.classes[k])(x[rows], t[rows])
        return out


def guided_moments(betas: np.ndarray, variance: str, cond: tuple[float, float], null: tuple[float, float],
                   w: float) -> tuple[float, float]:
    """Mean and std of ancestral samples with the guided eps~ = (1 + w) eps*_c - w eps*_u (Ho &
    Salimans 2022), both branches Gaussian oracles. Each eps* is affine in x_t, eps* = a x_t + b with
    a = sqrt(1-ab) / (ab s^2 + 1 - ab), b = -a sqrt(ab) m; so is eps~, and so the step
    x_{t-1} = c1 (x_t - sqrt(1-ab) eps~) / sqrt(ab) + c2 x_t + sigma z (eqs. 4, 7, 11):
    M <- A M + B, V <- A^2 V + sigma^2, from N(0, 1)."""
    ab, c1, c2, _ = _posterior(betas)

    def affine(m, s):
        a = np.sqrt(1 - ab) / (ab * s**2 + 1 - ab)
        return a, -a * np.sqrt(ab) * m

    (a_c, b_c), (a_u, b_u) = affine(*cond), affine(*null)
    a, b = (1 + w) * a_c - w * a_u, (1 + w) * b_c - w * b_u
    A = c1 * (1 - np.sqrt(1 - ab) * a) / np.sqrt(ab) + c2
    B = -c1 * np.sqrt(1 - ab) * b / np.sqrt(ab)
    return _reverse_moments(A, B, sigma2(betas, variance))


def _coefficients(betas: np.ndarray, m: float, s2: float):
    """alpha-bar_t, the posterior mean's c1 and c2, and the oracle's x0-hat = a_x0 x_t + b_x0 (data
    N(m, s2))."""
    ab, c1, c2, _ = _posterior(betas)
    # x0_hat = E[x0 | x_t] = m + sqrt(ab) s2 / (ab s2 + 1 - ab) (x_t - sqrt(ab) m)
    g = np.sqrt(ab) * s2 / (ab * s2 + 1 - ab)
    a_x0, b_x0 = g, m - g * np.sqrt(ab) * m
    return ab, c1, c2, a_x0, b_x0


def sigma2(betas: np.ndarray, variance: str) -> np.ndarray:
    return {"fixed_beta_tilde": _posterior(betas).variance, "fixed_beta": betas}[variance]


def sampled_moments(betas: np.ndarray, variance: str, m: float = M, s: float = S) -> tuple[float, float]:
    """Mean and std of ancestral samples: iterate M <- A M + B, V <- A^2 V + sigma^2 from N(0, 1)."""
    _, c1, c2, a_x0, b_x0 = _coefficients(betas, m, s**2)
    return _reverse_moments(c1 * a_x0 + c2, c1 * b_x0, sigma2(betas, variance))


def quantized_distribution(m: float = M, s: float = S, bits: int = 8):
    """Grid values in [-1, 1] and their probabilities for N(m, s^2) rounded to 2^bits levels."""
    n = 2**bits - 1
    grid = np.arange(n + 1) / n * 2 - 1
    edges = np.concatenate([[-np.inf], (grid[:-1] + grid[1:]) / 2, [np.inf]])
    p = np.diff(normal_cdf((edges - m) / s))
    return grid, p


def quantize(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    n = 2**bits - 1
    return torch.round((x.clamp(-1, 1) + 1) / 2 * n) / n * 2 - 1


def entropy_bpd(m: float = M, s: float = S) -> float:
    _, p = quantized_distribution(m, s)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def normal_cdf(x) -> np.ndarray:
    """Phi(x), the standard normal CDF, in float64 (infinite arguments allowed)."""
    return torch.special.ndtr(torch.as_tensor(np.asarray(x, dtype=np.float64))).numpy()


def _approx_cdf(x):
    return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _discretized_loglik(x, mean, log_scale, exact: bool = False):
    cdf = normal_cdf if exact else _approx_cdf
    inv = np.exp(-log_scale)
    cp, cm = cdf(inv * (x - mean + 1 / 255)), cdf(inv * (x - mean - 1 / 255))
    return np.where(x < -0.999, np.log(np.maximum(cp, 1e-12)),
                    np.where(x > 0.999, np.log(np.maximum(1 - cm, 1e-12)), np.log(np.maximum(cp - cm, 1e-12))))


def expected_bound(betas: np.ndarray, variance: str | np.ndarray, m: float = M, s: float = S,
                   exact_cdf: bool = True) -> dict[str, float]:
    """E[L_T + sum L_{t-1} + L_0] in bits/dim for 8-bit quantized N(m, s^2) data and the oracle,
    with sigma^2 = beta or beta-tilde, or given log sigma_t^2 (an array: see ``log_variances``).

    The oracle's x0-hat is linear in x_t, so E(x0 - x0_hat)^2 depends only on the quantized
    data's first two moments (exact); L_0 is integrated by Gauss-Hermite quadrature.
    """
    grid, p = quantized_distribution(m, s)
    mq = float((grid * p).sum())
    vq = float(((grid - mq) ** 2 * p).sum())
    ab, c1, _, a_x0, b_x0 = _coefficients(betas, m, s**2)
    log_tilde, log_sig = log_variances(betas, variance)
    # x0_hat - x0 = (a sqrt(ab) - 1) x0 + a sqrt(1-ab) eps + b  -> its second moment
    bias = (a_x0 * np.sqrt(ab) - 1) * mq + b_x0
    mse = (a_x0 * np.sqrt(ab) - 1) ** 2 * vq + a_x0**2 * (1 - ab) + bias**2
    kl = 0.5 * (log_sig - log_tilde + np.exp(log_tilde - log_sig) - 1 + c1**2 * mse / np.exp(log_sig))
    prior = 0.5 * (-np.log(1 - ab[-1]) + (1 - ab[-1]) + ab[-1] * (vq + mq**2) - 1)
    # L_0: x_1 = sqrt(ab0) x0 + sqrt(1-ab0) eps, mean = x0_hat(x_1) (c1 = 1, c2 = 0 at index 0)
    z, w = np.polynomial.hermite_e.hermegauss(80)
    w = w / w.sum()
    x0 = grid[:, None]
    mean0 = a_x0[0] * (np.sqrt(ab[0]) * x0 + np.sqrt(1 - ab[0]) * z[None, :]) + b_x0[0]
    l0 = -(p[:, None] * w[None, :] * _discretized_loglik(x0, mean0, 0.5 * log_sig[0], exact_cdf)).sum()
    ln2 = np.log(2)
    terms = {"prior": prior / ln2, "L0": l0 / ln2, "kl": kl[1:].sum() / ln2}
    terms["total"] = terms["prior"] + terms["L0"] + terms["kl"]
    return terms


def log_variances(betas: np.ndarray, variance: str | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log beta-tilde_t and the model's log sigma_t^2, both with index 0 set to index 1 (Ho's clipping);
    ``variance`` an array: the model's log sigma_t^2 as given (index 0: the decoder's)."""
    tilde = _posterior(betas).variance
    log_tilde = np.log(np.append(tilde[1], tilde[1:]))
    if isinstance(variance, np.ndarray):
        return log_tilde, variance
    return log_tilde, {"fixed_beta_tilde": log_tilde, "fixed_beta": np.log(np.append(tilde[1], betas[1:]))}[variance]


def sampled_bound_terms(betas: np.ndarray, variance: str | np.ndarray, x0: np.ndarray, eps, m: float = M,
                        s: float = S, exact_cdf: bool = True) -> np.ndarray:
    """The single-sample estimator of the bound, per image, in bits/dim: [B, T + 1] with columns
    L_0 .. L_{T-1} and L_T, for images ``x0`` [B, D] and the noise ``eps`` [T, B, D] drawn at each t
    (or a function t -> [B, D], to draw it as it goes).

    From eqs. 4-7 and 11: x_t = sqrt(ab) x0 + sqrt(1 - ab) eps; the oracle's mu = c1 x0_hat + c2 x_t;
    L_{t-1} = KL(N(mu_tilde, beta-tilde) || N(mu, sigma^2)), L_0 the discretized Gaussian decoder
    (the exact normal CDF, as the decoder's default; the reference code's tanh form unless
    ``exact_cdf``), L_T = KL(q(x_T | x0) || N(0, I)).
    """
    T = len(betas)
    ab, c1, c2, a_x0, b_x0 = _coefficients(betas, m, s**2)
    log_tilde, log_sig = log_variances(betas, variance)
    out = np.empty((x0.shape[0], T + 1))
    noise = eps if callable(eps) else eps.__getitem__
    for t in range(T):
        x_t = np.sqrt(ab[t]) * x0 + np.sqrt(1 - ab[t]) * noise(t)
        mu_model = c1[t] * (a_x0[t] * x_t + b_x0[t]) + c2[t] * x_t
        if t == 0:
            out[:, 0] = -_discretized_loglik(x0, mu_model, 0.5 * log_sig[0], exact_cdf).mean(1)
        else:
            mu_true = c1[t] * x0 + c2[t] * x_t
            out[:, t] = 0.5 * (log_sig[t] - log_tilde[t] + np.exp(log_tilde[t] - log_sig[t]) - 1
                               + ((mu_true - mu_model) ** 2).mean(1) / np.exp(log_sig[t]))
    out[:, T] = 0.5 * (-np.log(1 - ab[-1]) + (1 - ab[-1]) + ab[-1] * (x0**2).mean(1) - 1)
    return out / np.log(2)
