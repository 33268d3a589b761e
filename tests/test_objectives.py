"""Objectives against the Gaussian oracle's closed forms."""

import math

import numpy as np
import pytest
import torch

from ddpm_kit.testing import oracle
from helpers import make_diffusion
from ddpm_kit.errors import DdpmKitError


def gaussian_batch(n=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    return oracle.M + oracle.S * torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64), g


@pytest.mark.parametrize("index", [1, 100, 500, 999])
def test_simple_loss_of_the_optimal_predictor_is_the_posterior_variance_of_eps(registry, index):
    """E||eps - eps*||^2 = Var(eps | x_t) = ab s^2 / (ab s^2 + 1 - ab) for Gaussian data."""
    d = make_diffusion(registry)
    x0, g = gaussian_batch()
    t = torch.full((len(x0),), index)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    loss = registry.build("objective", "simple").losses(d, oracle.EpsOracle(oracle.linear_betas()), x0, t, noise)["loss"]
    ab = np.cumprod(1 - oracle.linear_betas())[index]
    expected = ab * oracle.S**2 / (ab * oracle.S**2 + 1 - ab)
    assert loss.mean().item() == pytest.approx(expected, rel=4 * math.sqrt(2 / (16 * len(x0))))


@pytest.mark.parametrize("index", [1, 300, 998])
def test_vlb_objective_is_the_bound_term_at_t(registry, index):
    d = make_diffusion(registry, variance="fixed_beta_tilde")
    x0, g = gaussian_batch(2048, seed=index)
    t = torch.full((len(x0),), index)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    vb = registry.build("objective", "vlb").losses(d, oracle.EpsOracle(oracle.linear_betas()), x0, t, noise)["loss"]
    # closed form of the KL term: sigma^2 = beta-tilde, so only the mean term remains
    b = oracle.linear_betas()
    ab = np.cumprod(1 - b)
    ab_prev = np.append(1, ab[:-1])
    c1 = b[index] * np.sqrt(ab_prev[index]) / (1 - ab[index])
    tilde = b[index] * (1 - ab_prev[index]) / (1 - ab[index])
    var_x0 = oracle.S**2 * (1 - ab[index]) / (ab[index] * oracle.S**2 + 1 - ab[index])
    expected = 0.5 * c1**2 * var_x0 / tilde / math.log(2)
    assert vb.mean().item() == pytest.approx(expected, rel=0.05)


def test_simple_objective_refuses_a_learned_variance(registry):
    d = make_diffusion(registry, variance="learned")
    with pytest.raises(DdpmKitError, match="objective 'simple' cannot train variance 'learned'"):
        registry.build("objective", "simple").validate_diffusion(d)
    registry.build("objective", "vlb").validate_diffusion(d)  # the bound trains it


def test_vlb_trains_a_learned_variance_towards_beta_tilde(registry):
    """With the oracle mean and a free log-variance per timestep, minimising the bound term
    drives sigma_t^2 to beta-tilde_t + c1^2 Var(x0|x_t) (the KL-optimal variance)."""
    T = 20
    d = make_diffusion(registry, variance="learned", T=T)
    betas = d.betas.numpy()
    mean_model = oracle.EpsOracle(betas)
    log_var = torch.nn.Parameter(torch.zeros(T, dtype=torch.float64))

    def model(x, t):
        return torch.cat([mean_model(x, t), log_var[t].view(-1, 1, 1, 1).expand_as(x)], dim=1)

    opt = torch.optim.Adam([log_var], lr=0.05)
    objective = registry.build("objective", "vlb")
    x0, g = gaussian_batch(512, seed=5)
    for _ in range(400):
        t = torch.randint(1, T, (len(x0),), generator=g)
        loss = objective.losses(d, model, x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))["loss"]
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    ab = np.cumprod(1 - betas)
    ab_prev = np.append(1, ab[:-1])
    c1 = betas * np.sqrt(ab_prev) / (1 - ab)
    tilde = betas * (1 - ab_prev) / (1 - ab)
    var_x0 = oracle.S**2 * (1 - ab) / (ab * oracle.S**2 + 1 - ab)
    optimal = np.log(tilde + c1**2 * var_x0)
    np.testing.assert_allclose(log_var.detach().numpy()[5:], optimal[5:], atol=0.1)


class Recording:
    """An objective that records what training_losses hands it (t, noise, update calls)."""

    def __init__(self, inner, T):
        self.inner, self.T, self.updates, self.seen = inner, T, [], {}

    def sample_t(self, d, batch_size, device, generator=None):
        t = torch.randint(0, self.T, (batch_size,), generator=generator)
        return t, torch.full((batch_size,), 2.0)

    def losses(self, d, model, x0, t, noise):
        self.seen = {"t": t, "noise": noise}
        return self.inner.losses(d, model, x0, t, noise)

    def update(self, t, losses):
        self.updates.append((t, losses))


@pytest.mark.statistical
def test_training_losses_weights_the_loss_and_draws_what_it_is_not_given(registry):
    """Given t, noise and weights, ``loss`` is the objective's loss times the weights and
    ``unweighted_loss`` the loss itself; without them t comes from the objective's sample_t and the
    noise is N(0, I): with a zero network L_simple is mean(eps^2), chi-square with mean 1 and
    variance 2/16 per image, so its batch mean is 1 within 4.5 x sqrt(2/16/4096) = 0.025."""
    from helpers import test_seed

    d = make_diffusion(registry, T=10)
    simple = registry.build("objective", "simple")
    zero = (lambda x, t: torch.zeros_like(x))
    x0, g = gaussian_batch(4096, seed=test_seed(5))
    t, noise, weights = torch.full((4096,), 3), torch.full(x0.shape, 2.0, dtype=x0.dtype), torch.full((4096,), 0.5)
    recording = Recording(simple, 10)
    out = d.training_losses(zero, x0, recording, t=t, noise=noise, weights=weights)
    torch.testing.assert_close(out["unweighted_loss"], torch.full((4096,), 4.0, dtype=x0.dtype))  # (2 - 0)^2
    torch.testing.assert_close(out["loss"], torch.full((4096,), 2.0, dtype=x0.dtype))
    assert torch.equal(out["t"], t) and len(recording.updates) == 1 and torch.equal(recording.updates[0][0], t)
    torch.testing.assert_close(recording.updates[0][1], out["unweighted_loss"])
    out = d.training_losses(zero, x0, recording, generator=g, update=False)
    assert len(recording.updates) == 1  # update=False leaves it to the caller
    assert torch.equal(out["t"], recording.seen["t"]) and set(out["t"].tolist()) == set(range(10))
    torch.testing.assert_close(out["loss"], 2.0 * out["unweighted_loss"])  # sample_t's weights applied
    assert out["unweighted_loss"].mean().item() == pytest.approx(1.0, abs=4.5 * math.sqrt(2 / 16 / 4096))
    assert recording.seen["noise"].dtype == x0.dtype and recording.seen["noise"].shape == x0.shape
    seed = test_seed(6)  # t and noise come from the generator it is given: the same seed, the same draw
    first, again = (d.training_losses(zero, x0, simple, generator=torch.Generator().manual_seed(seed))
                    for _ in range(2))
    assert torch.equal(first["t"], again["t"]) and torch.equal(first["loss"], again["loss"])


def test_p_mean_variance_does_not_clip_x0_hat_unless_asked(registry):
    """x0-hat = (x_t - sqrt(1 - ab) eps) / sqrt(ab) (eq. 15 solved for x0), left outside [-1, 1] by
    default (the bound is computed unclipped); clip_denoised=True clamps it."""
    d = make_diffusion(registry)
    x_t, t = torch.full((2, 1, 2, 2), 3.0, dtype=torch.float64), torch.tensor([10, 500])
    eps = torch.full_like(x_t, -1.0)
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[t.numpy()].reshape(-1, 1, 1, 1)
    want = torch.from_numpy((3.0 + np.sqrt(1 - ab)) / np.sqrt(ab)).expand_as(x_t)
    assert (want > 1).all()
    torch.testing.assert_close(d.p_mean_variance(lambda x, tt: eps, x_t, t).pred_x0, want, rtol=1e-12, atol=0)
    clipped = d.p_mean_variance(lambda x, tt: eps, x_t, t, clip_denoised=True).pred_x0
    assert torch.equal(clipped, torch.ones_like(x_t))


def test_an_objective_written_with_the_former_check_name_is_still_asked(registry):
    """``Objective.validate_diffusion`` was called ``check``; a plugin's ``check(d)`` still refuses."""
    from ddpm_kit.api import DdpmKitError, Objective

    class Former(Objective):
        def check(self, d):
            raise DdpmKitError(f"cannot train {d.variance.name}")

        def losses(self, d, model, x0, t, noise):
            return {"loss": x0.mean((1, 2, 3))}

    with pytest.raises(DdpmKitError, match="cannot train fixed_beta"):
        Former().validate_diffusion(make_diffusion(registry, T=10))


@pytest.mark.slow
def test_an_objectives_other_terms_are_logged_under_its_name(tmp_path, fresh_accelerate_state):
    """ddpm-kit-improved's hybrid returns loss = mse + lambda T vb with its mse and vb: metrics.jsonl
    logs each term's mean as objective/<key>, and the logged means satisfy the same identity."""
    import json

    from helpers import TINY, cli

    run = tmp_path / "run"
    result = cli("run", str(TINY), "--run-dir", str(run), "--set", 'objective={name="hybrid", vlb_weight=0.01}',
                 "--set", 'diffusion.variance.name="learned_range"', "--set", "train.steps=4",
                 "--set", "train.log_every=2", "--no-sample", "--no-eval")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(k for k in line if k.startswith("objective/")) for line in lines] == [["objective/mse",
                                                                                          "objective/vb"]] * 2
    for line in lines:
        assert line["loss"] == pytest.approx(line["objective/mse"] + 0.01 * 50 * line["objective/vb"], rel=1e-5)
        assert line["objective/vb"] > 0
