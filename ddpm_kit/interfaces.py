"""The interfaces each plugin kind provides. Timesteps are 0-based: index t is the paper's t+1.

A recipe name becomes one of these objects through the registry (see docs/architecture.md). What
a plugin may offer beyond the required methods is declared here too, with its default: an
objective's ``validate_diffusion``, ``sample_t``, ``update`` and ``state_dict``; a variance's and a
parameterization's diffusers names; a sampler factory's ``CannotSample``. What a factory may declare
(engine-supplied arguments, a cheap ``check`` of its parameters, the keys its ``**kwargs`` take) is
in ``ddpm_kit.plugins.KINDS`` and ``register``'s keywords (docs/writing-a-plugin.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from .errors import DdpmKitError

if TYPE_CHECKING:
    from .diffusion import GaussianDiffusion

Model = Callable[..., torch.Tensor]
"""A backbone: ``model(x [B,C,H,W], t [B] long) -> [B, C_out, H, W]``; a class-conditional one also
takes ``class_labels`` [B] long (-1: no label). Samplers, objectives and metrics call ``model(x, t)``:
the engine binds the conditioning first (``ddpm_kit.conditioning``)."""


@dataclass(frozen=True)
class Schedule:
    """A forward-process noise schedule: beta_1..beta_T (float64, Ho et al. 2020 eq. 2)."""

    betas: torch.Tensor

    def __post_init__(self) -> None:
        betas = torch.as_tensor(self.betas, dtype=torch.float64)
        if betas.ndim != 1 or len(betas) == 0:
            raise ValueError("betas must be a non-empty 1-D sequence")
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("every beta must lie in (0, 1]")
        object.__setattr__(self, "betas", betas)

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)


class Parameterization(ABC):
    """What the network's mean output predicts (eps, x0, or the posterior mean mu).

    Subclasses define the two conversions below; everything else follows from them. The MSE
    target of L_simple is ``from_x0`` at the true x0: the output a perfect network would give.
    """

    name: str = ""
    diffusers_prediction_type: str | None = None
    """diffusers' name for this output (a scheduler's ``prediction_type``), if it has one."""
    chain_dependent: bool = False
    """Whether the output's meaning depends on the step to the previous timestep (mu: the mean of
    x_{t-1}), not only on x_t and t: a respaced diffusion then reads it on the trained chain."""

    @abstractmethod
    def from_x0(self, d: GaussianDiffusion, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network output that corresponds to predicting ``x0`` from ``x_t``."""

    @abstractmethod
    def predict_x0(self, d: GaussianDiffusion, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0-hat from the network output."""

    def predict_eps(self, d: GaussianDiffusion, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps-hat from the network output (via x0-hat, eq. 4 solved for eps)."""
        return d.eps_from_x0(x_t, t, self.predict_x0(d, output, x_t, t))

    def predict_mean(
        self, d: GaussianDiffusion, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, x0_hat: torch.Tensor
    ) -> torch.Tensor:
        """mu_theta(x_t, t): the posterior mean (eq. 7) at x0-hat."""
        return d.q_posterior_mean(x0_hat, x_t, t)

    def target(
        self, d: GaussianDiffusion, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """The regression target of L_simple."""
        return self.from_x0(d, x0, x_t, t)


class VarianceChoice(ABC):
    """Sigma_theta(x_t, t) of the reverse process (section 3.2)."""

    name: str = ""
    learned: bool = False
    diffusers_variance_type: str | None = None
    """diffusers' ``DDPMScheduler`` ``variance_type`` with this sigma_t^2, if it has one (export and
    the ``diffusers-ddpm`` sampler use it)."""
    not_in_diffusers: str = "it has no variance_type for it"
    """Why there is none (the export's refusal names it)."""

    def extra_channels(self, channels: int) -> int:
        """Output channels the network needs beyond the mean's ``channels``."""
        return 0

    def split(self, output: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Split a network output into (mean part, variance part or None)."""
        return output, None

    @abstractmethod
    def log_variance(
        self, d: GaussianDiffusion, var_output: torch.Tensor | None, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """log sigma_t^2, broadcastable to x_t."""


class LearnedVariance(VarianceChoice):
    """A variance read from C extra network channels (the network outputs [mean part, variance part])."""

    learned = True

    def extra_channels(self, channels: int) -> int:
        return channels

    def split(self, output: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return output[:, :channels], output[:, channels:]


class Decoder(ABC):
    """L_0 = -log p(x0 | x_1): the reverse process decoder (section 3.3)."""

    name: str = ""

    @abstractmethod
    def log_likelihood(self, x0: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
        """Elementwise log-likelihood in nats of data ``x0`` under N(mean, exp(log_scale)^2)."""


class Sampler(Protocol):
    """A flat sampling function, like k-diffusion's samplers: x_T in, x_0 out (a tensor of x_T's shape).

    ``callback`` (optional to call) takes one dict after each reverse step: ``i``, the number of
    steps still to take after this one (K-1, K-2, ..., 0 for a K-step sampler, whatever timesteps
    it visits; k-diffusion's callback ``i`` counts the steps taken instead), ``x`` (the sample after
    the step) and ``x0_hat`` (the prediction of x0 it used: k-diffusion's ``denoised``).
    The engine reads the number of steps from the first ``i`` for its progress bar and the
    progressive grid; a sampler that reports another ``i`` gets a warning and both count its
    reports instead; one that never calls it still samples (no progressive grid).
    Draw noise with ``randn_like(x, generator, noise)``: the engine passes ``noise`` (one generator
    per image) so that an image does not depend on its batch.

    Its factory gets the recipe's parameters and, if it declares them, ``num_timesteps`` and the
    run's ``diffusion``; a sampler that cannot sample that diffusion raises ``CannotSample`` there,
    before any training, and the engine names the samplers that can.
    """

    def __call__(
        self,
        diffusion: GaussianDiffusion,
        model: Model,
        x_T: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
        noise: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor: ...


class Objective(ABC):
    """A training loss: per-example loss for a batch at given timesteps and noise."""

    name: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "check" in cls.__dict__ and "validate_diffusion" not in cls.__dict__:  # the method's former name
            cls.validate_diffusion = cls.check

    def validate_diffusion(self, d: GaussianDiffusion) -> None:
        """Raise ``DdpmKitError`` if this objective cannot train ``d`` (e.g. cannot learn variance);
        the engine calls it before any training."""

    def sample_t(self, d: GaussianDiffusion, batch_size: int, device: torch.device,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps for a batch and their importance weights (uniform by default)."""
        t = torch.randint(0, d.num_timesteps, (batch_size,), device=device, generator=generator)
        return t, torch.ones(batch_size, device=device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Observe per-example losses (for importance sampling of t); no-op by default. An objective
        that overrides it gets every process's (t, unweighted loss) after each micro-step."""

    def state_dict(self) -> dict[str, Any]:
        """What checkpoints keep of this objective (a loss history, say); override with
        ``load_state_dict`` to have it saved and restored on resume."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    @property
    def learns_from_losses(self) -> bool:
        """Whether the engine must call ``update`` (it is overridden)."""
        return type(self).update is not Objective.update

    @property
    def has_state(self) -> bool:
        """Whether checkpoints keep this objective's state (``state_dict`` is overridden)."""
        return type(self).state_dict is not Objective.state_dict

    @abstractmethod
    def losses(
        self, d: GaussianDiffusion, model: Model, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Per-example terms; the key ``loss`` is minimised."""


class CannotSample(DdpmKitError):
    """Raised by a sampler factory given a ``diffusion`` it cannot sample (diffusers' schedulers
    and a mu-predicting or learned-variance run, say); the engine adds which samplers can."""


class Metric(ABC):
    """An evaluation metric over a trained run's model and data."""

    name: str = ""

    @abstractmethod
    def compute(self, context: Any) -> dict[str, float | int | str]:
        """Named figures: numbers, or short text (what a figure was measured with); names of their
        own (the engine refuses one another metric already reported, and 'weights', 'sampler')."""
