"""The probability-flow ODE of a trained DDPM and the log-likelihood it gives (Song et al. 2021,
eqs. 13 and 39), through ``ddpm_kit.api`` only.

Time is the continuous timestep index s in [0, T-1]: log alpha-bar(s) is the cubic spline through
the integer timesteps (scipy's CubicSpline, not-a-knot: alpha-bar(s) is alpha-bar_t at s = t, and
smooth in between, so an adaptive solver meets no kinks), and the network is called
with the fractional timestep s (UNet2DModel's sinusoidal embedding takes any real number). With
x(s) = sqrt(abar) x_0 + sqrt(1 - abar) eps, the ODE whose marginals are the forward marginals is

    dx/ds = E[dx/ds | x] = 1/2 (d log abar / ds) (x - eps_theta(x, s) / sqrt(1 - abar(s)))

(the DDIM ODE; the VP probability flow with beta(s) = -d log abar / ds), and the instantaneous
change of variables gives log p_0(x(0)) = log N(x(T-1); 0, I) + int_0^{T-1} div(dx/ds) ds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ddpm_kit.api import DdpmKitError, GaussianDiffusion, Model, Schedule


class ContinuousSchedule:
    """alpha-bar(s) for real s in [0, T-1]: the cubic spline of log alpha-bar through the timesteps."""

    def __init__(self, d: GaussianDiffusion) -> None:
        from scipy.interpolate import CubicSpline

        if d.num_timesteps < 4:
            raise DdpmKitError(f"the probability-flow ODE needs T >= 4 timesteps to interpolate, got {d.num_timesteps}")
        self.spline = CubicSpline(np.arange(d.num_timesteps), d.alphas_cumprod.log().numpy())
        self.slope = self.spline.derivative()

    def log_alpha_bar(self, s: float) -> tuple[float, float]:
        """log alpha-bar(s) and its derivative d log alpha-bar / ds."""
        return float(self.spline(s)), float(self.slope(s))


class ProbabilityFlow(torch.nn.Module):
    """f(s, (x, logp)) for torchdiffeq: the ODE's velocity and the divergence of it (d log p / ds
    along the path is -div; integrating +div from data to noise accumulates log p_0 - log p_end).

    ``trace``: "hutchinson" (one probe per row, ``probes`` [B, ...] fixed for the whole path:
    div ~ z^T J z, unbiased for Rademacher or Gaussian z) or "exact" (one backward pass per
    dimension: for tiny images and tests). Counts its calls in ``nfe``.
    """

    def __init__(self, d: GaussianDiffusion, model: Model, trace: str = "hutchinson",
                 probes: torch.Tensor | None = None) -> None:
        super().__init__()
        if d.parameterization.chain_dependent:
            raise DdpmKitError(f"the probability-flow ODE needs eps-hat at any noise level; parameterization "
                               f"'{d.parameterization.name}' means the mean of the next step of the trained chain")
        if trace not in ("hutchinson", "exact"):
            raise DdpmKitError(f"trace must be 'hutchinson' or 'exact', got {trace!r}")
        self.d, self.model, self.trace, self.probes = d, model, trace, probes
        self.schedule = ContinuousSchedule(d)
        self.nfe = 0

    def velocity(self, s: float, x: torch.Tensor) -> torch.Tensor:
        log_ab, slope = self.schedule.log_alpha_bar(s)
        d = self.d
        # a one-step diffusion at alpha-bar(s) reads the parameterization at that noise level
        here = GaussianDiffusion(Schedule(torch.tensor([-math.expm1(log_ab)], dtype=torch.float64)),
                                 d.parameterization, d.variance, d.decoder)
        t = torch.full((x.shape[0],), s, dtype=x.dtype, device=x.device)
        output, _ = d.variance.split(self.model(x, t), x.shape[1])
        eps = d.parameterization.predict_eps(here, output, x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device))
        return 0.5 * slope * (x - eps / math.sqrt(-math.expm1(log_ab)))

    def forward(self, s: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        self.nfe += 1
        with torch.enable_grad():
            x = state[0].detach().requires_grad_(True)
            v = self.velocity(float(s), x)
            if self.trace == "exact":
                flat = v.flatten(1)
                div = sum(torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)[0].flatten(1)[:, i]
                          for i in range(flat.shape[1]))
            else:
                div = (torch.autograd.grad((v * self.probes).sum(), x)[0] * self.probes).flatten(1).sum(1)
        return v.detach(), div.detach()


@dataclass
class LogLikelihood:
    """log p_0(x) per row in nats, the path's end x(T-1), and the solver's function evaluations."""

    log_p: torch.Tensor
    end: torch.Tensor
    nfe: int


def ode_log_likelihood(d: GaussianDiffusion, model: Model, x: torch.Tensor, *, trace: str = "hutchinson",
                       probes: torch.Tensor | None = None, rtol: float = 1e-5, atol: float = 1e-5,
                       method: str = "dopri5", start: float = 0.0) -> LogLikelihood:
    """log p_0(x) of the probability-flow ODE from s = ``start`` (the first trained timestep) to
    T-1, with the prior N(0, I) at the end: an adaptive solver (torchdiffeq, dopri5 at rtol = atol
    = 1e-5 as score_sde's RK45). Every row is integrated together: the step sizes, and so the
    answer to solver tolerance, depend on which rows share the call, never on anything else."""
    from torchdiffeq import odeint

    flow = ProbabilityFlow(d, model, trace)
    span = torch.tensor([start, d.num_timesteps - 1.0], dtype=x.dtype, device=x.device)
    with torch.inference_mode(False):  # a metric runs in inference mode: the divergence needs autograd
        x, flow.probes = x.clone(), None if probes is None else probes.clone()
        zero = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        ends, integrals = odeint(flow, (x, zero), span, rtol=rtol, atol=atol, method=method)
        end, integral = ends[-1], integrals[-1]
    prior = -0.5 * (end.flatten(1).pow(2).sum(1) + end[0].numel() * math.log(2 * math.pi))
    return LogLikelihood(prior + integral, end, flow.nfe)


def dequantize(x: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """Uniform dequantization as Song et al. 2021 (score_sde) and Ho et al.'s bits/dim: 8-bit pixels
    k (from ``x`` in [-1, 1], k = (x + 1) 127.5) become (k + u) / 256 with u ~ U[0, 1), mapped to
    [-1, 1); u is Phi(``normal``), the image's own standard normal draw."""
    pixels = torch.round((x + 1) * 127.5)
    u = 0.5 * (1 + torch.erf(normal / math.sqrt(2)))
    return 2 * (pixels + u) / 256 - 1


DEQUANTIZATION_OFFSET_BITS = 7.0
"""bits/dim = -log2 p(x) / D + 7: a bin of the dequantized [-1, 1) is 2/256 wide, -log2(2/256) = 7
(score_sde's offset ``7 - inverse_scaler(-1)`` for centred data)."""


def bits_per_dim(log_p: torch.Tensor | np.ndarray, dims: int) -> np.ndarray:
    """The dequantized data's bits/dim from log p (nats) of dequantized images of ``dims`` values."""
    return -np.asarray(log_p, dtype=np.float64) / (dims * math.log(2)) + DEQUANTIZATION_OFFSET_BITS
