"""The hybrid loss and importance-sampled L_vlb (Nichol & Dhariwal 2021, section 3.1 and 3.3)."""

from __future__ import annotations

import torch

from ddpm_kit.api import Objective, mean_flat


class Hybrid(Objective):
    """L_hybrid = L_simple + lambda L_vlb, with L_vlb = T E_t[L_t] and a stop-gradient on the mean in
    the vlb term, so that it trains only the variance (lambda = 0.001 in the paper)."""

    name = "hybrid"

    def __init__(self, vlb_weight: float = 0.001) -> None:
        self.vlb_weight = vlb_weight

    def losses(self, d, model, x0, t, noise):
        x_t = d.q_sample(x0, t, noise)
        output = d.model_output(model, x_t, t)
        channels = x0.shape[1]
        mean_part, var_part = d.variance.split(output, channels)
        mse = mean_flat((d.parameterization.target(d, x0, x_t, t, noise) - mean_part) ** 2)
        frozen = mean_part.detach() if var_part is None else torch.cat([mean_part.detach(), var_part], dim=1)
        vb = d.vb_terms_bpd_from_output(frozen, x0, x_t, t)["output"]
        return {"loss": mse + self.vlb_weight * d.num_timesteps * vb, "mse": mse, "vb": vb}


class ImportanceSampledVLB(Objective):
    """L_vlb with t drawn with probability proportional to sqrt(E[L_t^2]) (eq. 18), kept over the last
    ``history`` losses per t; uniform until every t has a full history. Weights 1/(T p_t) keep it unbiased."""

    name = "vlb_importance"

    def __init__(self, history: int = 10, uniform_prob: float = 0.001) -> None:
        self.history, self.uniform_prob = history, uniform_prob
        self._losses: torch.Tensor | None = None
        self._counts: torch.Tensor | None = None

    def _ensure(self, T: int) -> None:
        if self._losses is None:
            self._losses = torch.zeros(T, self.history, dtype=torch.float64)
            self._counts = torch.zeros(T, dtype=torch.long)

    def probabilities(self, T: int) -> torch.Tensor:
        self._ensure(T)
        if bool((self._counts < self.history).any()):
            return torch.full((T,), 1.0 / T, dtype=torch.float64)
        p = self._losses.pow(2).mean(dim=1).sqrt()
        p = p / p.sum()
        return p * (1 - self.uniform_prob) + self.uniform_prob / T

    def sample_t(self, d, batch_size, device, generator=None):
        p = self.probabilities(d.num_timesteps)
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (d.num_timesteps * p[t])
        return t.to(device), weights.float().to(device)

    def update(self, t, losses):
        self._ensure(len(self._counts) if self._counts is not None else int(t.max()) + 1)
        for ti, loss in zip(t.tolist(), losses.double().cpu().tolist()):
            if self._counts[ti] == self.history:
                self._losses[ti, :-1] = self._losses[ti, 1:].clone()
                self._losses[ti, -1] = loss
            else:
                self._losses[ti, self._counts[ti]] = loss
                self._counts[ti] += 1

    def losses(self, d, model, x0, t, noise):
        self._ensure(d.num_timesteps)
        x_t = d.q_sample(x0, t, noise)
        vb = d.vb_terms_bpd(model, x0, x_t, t)["output"]
        return {"loss": vb, "vb": vb}

    def state_dict(self) -> dict:
        return {"losses": self._losses, "counts": self._counts}

    def load_state_dict(self, state: dict) -> None:
        self._losses, self._counts = state["losses"], state["counts"]
