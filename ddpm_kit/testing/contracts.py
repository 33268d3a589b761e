"""Contract checks for plugin kinds: what the engine relies on, asserted with a message saying what
broke. The sampler's is statistical: it samples the Gaussian oracle's data and compares the
samples' moments with the expected ones within 5 Monte-Carlo standard errors (a correct sampler
fails it with probability below 1e-6 whatever the seed)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import oracle
from .runs import diffusion as make_diffusion

SE_MULTIPLE = 5.0  # two-sided normal tail at 5 standard errors: 5.7e-7


def assert_sampler_contract(sampler: Callable[..., torch.Tensor], diffusion=None, *, steps: int | None = None,
                            model=None, expected: tuple[float, float] | None = None, tolerance: float = 0.0,
                            images: int = 128, size: int = 8, seed: int = 0, calls_back: bool = True) -> None:
    """A sampler (what a sampler factory returns) against ``interfaces.Sampler``'s contract.

    ``diffusion`` defaults to the linear schedule, T = 1000, eps, sigma^2 = beta-tilde; ``model`` to
    the oracle's exact network for its parameterization (eps, x0, mu). Checks: the result is a
    finite tensor shaped like x_T; the callback's ``i`` counts the steps left down to 0 (``steps``
    of them, if given) with ``x`` and ``x0_hat`` shaped like x_T (unless ``calls_back=False``); the
    same noise gives the same images and other noise other images; the samples' mean and standard
    deviation lie within 5 Monte-Carlo standard errors plus ``tolerance`` (the sampler's own bias,
    e.g. a few steps' discretization error) of ``expected`` (default: the data's, N(oracle.M,
    oracle.S^2); ancestral sampling with all T steps reaches ``oracle.sampled_moments`` exactly).
    """
    from ..noise import ImageNoise

    d = diffusion or make_diffusion(variance="fixed_beta_tilde")
    model = model or oracle.EpsOracle(d.betas.numpy(), d.parameterization.name,
                                      extra_channels=d.variance.extra_channels(1))
    reports: list[dict[str, Any]] = []

    def draw(n: int, noise_seed: int, callback=None) -> torch.Tensor:
        noise = ImageNoise(noise_seed, range(n), torch.device("cpu"))
        x_T = noise(torch.empty(n, 1, size, size, dtype=torch.float64))
        with torch.no_grad():
            x = sampler(d, model, x_T, callback=callback, noise=noise)
        assert isinstance(x, torch.Tensor) and x.shape == x_T.shape, \
            f"the sampler returned {type(x).__name__} {getattr(x, 'shape', '')}, not a tensor shaped like x_T {tuple(x_T.shape)}"
        assert bool(torch.isfinite(x).all()), "the sampler returned non-finite values"
        return x

    x = draw(images, seed, reports.append)
    if calls_back:
        _assert_countdown(reports, steps, x.shape)
    again, other = draw(4, seed + 1), draw(4, seed + 2)
    assert torch.equal(draw(4, seed + 1), again), "the same noise gave other images (draw with randn_like(x, generator, noise))"
    assert not torch.equal(again, other), "other noise gave the same images"
    mean, std = expected or (oracle.M, oracle.S)
    n = x.numel()
    got_mean, got_std = float(x.mean()), float(x.std())
    mean_bound = SE_MULTIPLE * got_std / math.sqrt(n) + tolerance
    std_bound = SE_MULTIPLE * got_std / math.sqrt(2 * n) + tolerance
    assert abs(got_mean - mean) <= mean_bound, f"sample mean {got_mean:.5f}, expected {mean:.5f} +- {mean_bound:.5f}"
    assert abs(got_std - std) <= std_bound, f"sample std {got_std:.5f}, expected {std:.5f} +- {std_bound:.5f}"


def _assert_countdown(reports: list[dict[str, Any]], steps: int | None, shape: torch.Size) -> None:
    assert reports, "the sampler never called the callback (call it after each step with i, x, x0_hat)"
    counted = [r.get("i") for r in reports]
    assert counted == list(range(len(reports) - 1, -1, -1)), \
        f"the callback's i must count the steps left down to 0, got {counted[:5]}...{counted[-2:]}"
    assert steps is None or len(reports) == steps, f"{len(reports)} reports for {steps} steps"
    for key in ("x", "x0_hat"):
        value = reports[-1].get(key)
        assert isinstance(value, torch.Tensor) and value.shape == shape, f"the callback's {key} is not shaped like x_T"


def assert_schedule_contract(schedule, T: int) -> None:
    """A schedule (what a schedule factory returns for ``T``): a ``Schedule`` of ``T`` betas in
    (0, 1] (float64) whose alpha-bar lies in [0, 1) at every step (a beta too small to move 1 - beta
    off 1.0 in float64 leaves it at 1)."""
    from ..interfaces import Schedule

    assert isinstance(schedule, Schedule), f"a schedule factory returns ddpm_kit.api.Schedule, got {type(schedule).__name__}"
    betas = schedule.betas
    assert schedule.num_timesteps == T and betas.shape == (T,), f"{schedule.num_timesteps} betas for T = {T}"
    assert betas.dtype == torch.float64 and bool(((betas > 0) & (betas <= 1)).all()), "betas must lie in (0, 1]"
    alphas_cumprod = torch.cumprod(1 - betas, 0)  # betas in (0, 1] make it decrease; a beta that rounds away does not
    assert bool((alphas_cumprod < 1).all() & (alphas_cumprod >= 0).all()), "alpha-bar must lie in [0, 1) at every step"


def assert_objective_contract(objective, diffusion=None, *, keys: Sequence[str] = ("loss",), batch: int = 4,
                              seed: int = 0) -> None:
    """An objective (what an objective factory returns) on a small network: ``losses`` returns the
    documented ``keys``, each a finite per-example [B] tensor; ``loss`` has finite gradients, not all
    zero; ``validate_diffusion`` accepts ``diffusion`` (default: linear, T = 50, eps, sigma^2 = beta)."""
    d = diffusion or make_diffusion(T=50)
    objective.validate_diffusion(d)
    channels = d.output_channels(1)
    generator = torch.Generator().manual_seed(seed)
    model = _SmallNet(channels, d.num_timesteps)
    x0 = torch.rand(batch, 1, 8, 8, generator=generator) * 2 - 1
    terms = d.training_losses(model, x0, objective, generator=generator)
    for key in keys:
        value = terms.get(key)
        assert isinstance(value, torch.Tensor) and value.shape == (batch,), f"'{key}' is not a per-example [B] tensor"
        assert bool(torch.isfinite(value).all()), f"'{key}' is not finite"
    assert terms["loss"].requires_grad, "the loss does not depend on the network (no gradient)"
    terms["loss"].mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads), "the loss has non-finite gradients"
    assert any(bool((g != 0).any()) for g in grads), "the loss has no gradient"


class _SmallNet(torch.nn.Module):
    """A network of the right output width that depends on x and t (for an objective's gradients)."""

    def __init__(self, out_channels: int, num_timesteps: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, out_channels, 3, padding=1)
        self.time = torch.nn.Embedding(num_timesteps, out_channels)

    def forward(self, x, t):
        return self.conv(x.float()) + self.time(t)[:, :, None, None]

