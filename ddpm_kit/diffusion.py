"""GaussianDiffusion: the forward process q, the reverse process p_theta and the bound.

Composed from one Schedule, Parameterization, VarianceChoice and Decoder. Equation numbers refer
to Ho, Jain, Abbeel (2020). Schedule arithmetic is float64; coefficients are cast to the data's
dtype when gathered. Timestep indices are 0-based (index t is the paper's t+1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import DdpmKitError
from .gaussian import LN2, mean_flat, normal_kl
from .interfaces import Decoder, Model, Objective, Parameterization, Schedule, VarianceChoice
from .noise import NoiseSource, randn_like


@dataclass
class PMeanVariance:
    """The reverse step p_theta(x_{t-1} | x_t) and what it was computed from."""

    mean: torch.Tensor
    log_variance: torch.Tensor
    pred_x0: torch.Tensor
    output: torch.Tensor  # the full network output (mean and variance channels)

    @property
    def variance(self) -> torch.Tensor:
        return torch.exp(self.log_variance)


class GaussianDiffusion:
    """The DDPM diffusion process, with plugins for every ablated choice."""

    def __init__(self, schedule: Schedule, parameterization: Parameterization, variance: VarianceChoice,
                 decoder: Decoder) -> None:
        self.schedule = schedule
        self.parameterization = parameterization
        self.variance = variance
        self.decoder = decoder
        b = schedule.betas.to(torch.float64)
        self.num_timesteps = len(b)
        self.betas = b
        self.alphas = 1.0 - b
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)
        self.alphas_cumprod_prev = torch.cat([b.new_ones(1), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.log_one_minus_alphas_cumprod = torch.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()
        # q(x_{t-1} | x_t, x_0), eqs. 6-7
        self.posterior_variance = b * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # beta-tilde at index 0 is 0; the log is clipped with the value at index 1 (Ho's code).
        first = self.posterior_variance[1:2] if self.num_timesteps > 1 else b[:1]
        self.posterior_log_variance_clipped = torch.log(torch.cat([first, self.posterior_variance[1:]]))
        # Ho's "fixedlarge" log-variance: log beta_t, with log beta-tilde_1 at index 0
        self.log_betas_clipped = torch.log(torch.cat([first, b[1:]]))
        self.posterior_mean_coef1 = b * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1.0 - self.alphas_cumprod)
        self._device_cache: dict[tuple[torch.device, torch.dtype, str], torch.Tensor] = {}

    def with_variance(self, variance: VarianceChoice) -> GaussianDiffusion:
        """The same process (schedule, parameterization, decoder) with another reverse variance:
        e.g. a run trained with sigma^2 = beta bounded or sampled with beta-tilde. The replacement
        must read the network's output as the run's own variance does (the same extra channels):
        a learned variance gives way only to one that reads its channels, and a fixed one never to
        a learned one."""
        mine, theirs = self.variance.extra_channels(1), variance.extra_channels(1)
        if mine != theirs and mine:
            raise DdpmKitError(f"variance '{variance.name}' cannot replace this run's learned variance "
                               f"'{self.variance.name}' (its channels would go unread); it replaces a fixed one")
        if mine != theirs:
            raise DdpmKitError(f"variance '{variance.name}' is learned and this run's network has no channels for "
                               "it; name a fixed one (fixed_beta, fixed_beta_tilde)")
        return GaussianDiffusion(self.schedule, self.parameterization, variance, self.decoder)

    # -- helpers -----------------------------------------------------------------------------
    def gather(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``self.<name>[t]`` cast to ``like``'s dtype/device, shaped to broadcast over it."""
        key = (like.device, like.dtype, name)
        table = self._device_cache.get(key)
        if table is None:
            table = getattr(self, name).to(device=like.device, dtype=like.dtype)
            self._device_cache[key] = table
        return table[t].reshape(-1, *([1] * (like.ndim - 1)))

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)  (eq. 4 solved for eps)."""
        return (self.gather("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0) / self.gather(
            "sqrt_recipm1_alphas_cumprod", t, x_t)

    def x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)  (eq. 4 solved for x0; used in eq. 11)."""
        return (self.gather("sqrt_recip_alphas_cumprod", t, x_t) * x_t
                - self.gather("sqrt_recipm1_alphas_cumprod", t, x_t) * eps)

    def x0_from_posterior_mean(self, x_t: torch.Tensor, t: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """Invert eq. 7: x0 = (mu - coef2 x_t) / coef1."""
        return (mean - self.gather("posterior_mean_coef2", t, x_t) * x_t) / self.gather(
            "posterior_mean_coef1", t, x_t)

    # -- forward process q -------------------------------------------------------------------
    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor):
        """q(x_t | x_0) = N(sqrt(abar_t) x0, (1 - abar_t) I)  (eq. 4): mean, variance, log variance."""
        mean = self.gather("sqrt_alphas_cumprod", t, x0) * x0
        log_variance = self.gather("log_one_minus_alphas_cumprod", t, x0).expand_as(x0)
        return mean, torch.exp(log_variance), log_variance

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) with the given standard normal ``noise`` (eq. 4)."""
        return self.gather("sqrt_alphas_cumprod", t, x0) * x0 + self.gather(
            "sqrt_one_minus_alphas_cumprod", t, x0) * noise

    def q_posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """mu-tilde_t(x_t, x_0)  (eq. 7)."""
        return self.gather("posterior_mean_coef1", t, x_t) * x0 + self.gather("posterior_mean_coef2", t, x_t) * x_t

    def q_posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """q(x_{t-1} | x_t, x_0) = N(mu-tilde, beta-tilde I)  (eqs. 6-7): mean, variance, clipped log variance."""
        mean = self.q_posterior_mean(x0, x_t, t)
        variance = self.gather("posterior_variance", t, x_t).expand_as(x_t)
        log_variance = self.gather("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        return mean, variance, log_variance

    # -- reverse process p_theta -------------------------------------------------------------
    def output_channels(self, channels: int) -> int:
        """How many channels the backbone must output for ``channels``-channel data."""
        return channels + self.variance.extra_channels(channels)

    def model_output(self, model: Model, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Run the backbone and check that its output has the shape this diffusion needs."""
        output = model(x_t, t)
        want = self.output_channels(x_t.shape[1])
        if output.ndim != x_t.ndim or output.shape[0] != x_t.shape[0] or output.shape[2:] != x_t.shape[2:] \
                or output.shape[1] != want:
            raise DdpmKitError(
                f"backbone returned shape {tuple(output.shape)} for input {tuple(x_t.shape)}; variance "
                f"'{self.variance.name}' needs {want} output channels for {x_t.shape[1]}-channel data")
        return output

    def p_mean_variance(self, model: Model, x_t: torch.Tensor, t: torch.Tensor, *,
                        clip_denoised: bool = False) -> PMeanVariance:
        """p_theta(x_{t-1} | x_t) = N(mu_theta, sigma_t^2 I)  (eq. 1), optionally clipping x0-hat to [-1, 1]."""
        return self.p_mean_variance_from_output(self.model_output(model, x_t, t), x_t, t, clip_denoised=clip_denoised)

    def p_mean_variance_from_output(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, *,
                                    clip_denoised: bool = False) -> PMeanVariance:
        """As ``p_mean_variance``, from an already computed network output."""
        param_out, var_out = self.variance.split(output, x_t.shape[1])
        log_variance = self.variance.log_variance(self, var_out, x_t, t)
        pred_x0 = self.parameterization.predict_x0(self, param_out, x_t, t)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1.0, 1.0)
        mean = self.parameterization.predict_mean(self, param_out, x_t, t, pred_x0)
        return PMeanVariance(mean, log_variance.expand_as(x_t), pred_x0, output)

    # -- the variational bound (eq. 5) ------------------------------------------------------
    def prior_bpd(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) per example, in bits/dim."""
        t = torch.full((x0.shape[0],), self.num_timesteps - 1, device=x0.device, dtype=torch.long)
        mean, _, log_variance = self.q_mean_variance(x0, t)
        return mean_flat(normal_kl(mean, log_variance, torch.zeros_like(mean), torch.zeros_like(mean))) / LN2

    def vb_terms_bpd_from_output(self, output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
                                 t: torch.Tensor, *, clip_denoised: bool = False) -> dict[str, torch.Tensor]:
        """L_{t-1} (KL to the true posterior) for t > 0 and L_0 (decoder NLL) for t = 0, in bits/dim."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, x_t, t)
        p = self.p_mean_variance_from_output(output, x_t, t, clip_denoised=clip_denoised)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, p.mean, p.log_variance)) / LN2
        nll = -mean_flat(self.decoder.log_likelihood(x0, p.mean, 0.5 * p.log_variance)) / LN2
        return {"output": torch.where(t == 0, nll, kl), "pred_x0": p.pred_x0}

    def vb_terms_bpd(self, model: Model, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, *,
                     clip_denoised: bool = False) -> dict[str, torch.Tensor]:
        """As ``vb_terms_bpd_from_output``, running the model."""
        return self.vb_terms_bpd_from_output(self.model_output(model, x_t, t), x0, x_t, t, clip_denoised=clip_denoised)

    @torch.no_grad()
    def calc_bpd_loop(self, model: Model, x0: torch.Tensor, *, clip_denoised: bool = False,
                      generator: torch.Generator | None = None, noise: NoiseSource | None = None,
                      timesteps_per_batch: int = 1,
                      progress: Callable[[int], object] | None = None) -> dict[str, torch.Tensor]:
        """The full bound L_T + sum_t L_{t-1} + L_0 per example, in bits/dim (eq. 5).

        Returns ``total_bpd`` [B], ``prior_bpd`` [B] (L_T), ``vb`` [B, T] (column t is L_t, 0-based)
        and ``xstart_mse`` [B, T] (the squared error of x0-hat, clipped to [-1, 1], at each t:
        the distortion of Fig. 5).
        ``timesteps_per_batch`` > 1 stacks that many timesteps into one network call; the noise is
        drawn in the same order either way, so the results agree with the one-at-a-time loop.
        ``noise`` (e.g. ``ImageNoise``) draws each image's noise from its own generator, so an
        image's figures do not depend on the batch it is in. ``progress(n)`` is called after each
        chunk of ``n`` timesteps (a tqdm bar's ``update``).
        """
        batch, k = x0.shape[0], max(1, timesteps_per_batch)
        vb, mse = [], []
        order = list(reversed(range(self.num_timesteps)))
        for chunk in (order[i:i + k] for i in range(0, len(order), k)):
            t = torch.tensor(chunk, device=x0.device).repeat_interleave(batch)
            eps = torch.cat([randn_like(x0, generator, noise) for _ in chunk])
            x0_rep = x0.repeat(len(chunk), *([1] * (x0.ndim - 1)))
            out = self.vb_terms_bpd(model, x0_rep, self.q_sample(x0_rep, t, eps), t, clip_denoised=clip_denoised)
            vb.append(out["output"].view(len(chunk), batch))
            mse.append(mean_flat((out["pred_x0"].clamp(-1, 1) - x0_rep) ** 2).view(len(chunk), batch))
            if progress is not None:
                progress(len(chunk))
        vb_terms = torch.cat(vb).flip(0).T  # [B, T] in timestep order
        prior = self.prior_bpd(x0)
        return {"total_bpd": vb_terms.sum(dim=1) + prior, "prior_bpd": prior, "vb": vb_terms,
                "xstart_mse": torch.cat(mse).flip(0).T}

    # -- training ----------------------------------------------------------------------------
    def training_losses(self, model: Model, x0: torch.Tensor, objective: Objective, *,
                        t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                        weights: torch.Tensor | None = None, update: bool = True,
                        generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Per-example losses at sampled (or given) t and noise; ``loss`` is importance-weighted.

        ``update=False`` leaves ``objective.update`` to the caller (the engine gathers the losses
        of all processes first, so every process keeps the same sampling state).
        """
        if t is None:
            t, weights = objective.sample_t(self, x0.shape[0], x0.device, generator)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        terms = objective.losses(self, model, x0, t, noise)
        terms["unweighted_loss"] = terms["loss"].detach()
        if update:
            objective.update(t, terms["unweighted_loss"])
        if weights is not None:
            terms["loss"] = terms["loss"] * weights
        terms["t"] = t
        return terms
