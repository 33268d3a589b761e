"""L_simple with a Huber loss: an example objective plugin, written against ``ddpm_kit.api`` only."""

import torch.nn.functional as F

from ddpm_kit.api import DdpmKitError, Objective, hookimpl, mean_flat


class HuberLoss(Objective):
    """L_simple with the Huber loss in place of the squared error, on the parameterization's target.

    Per element e = output - target: 0.5 e^2 where |e| <= delta, else delta (|e| - delta / 2); the
    mean over pixels per example (``mean_flat``). With delta above every |e| it is 0.5 x the MSE of
    objective 'simple'; as delta -> 0 it is delta x the mean absolute error.
    """

    name = "huber"

    def __init__(self, delta: float = 1.0) -> None:
        if not delta > 0:
            raise DdpmKitError(f"objective 'huber' needs delta > 0, got {delta}")
        self.delta = delta

    def validate_diffusion(self, d):
        if d.variance.learned:
            raise DdpmKitError(f"objective 'huber' cannot train variance '{d.variance.name}' (its channels get no "
                               "gradient); use a fixed variance")

    def losses(self, d, model, x0, t, noise):
        x_t = d.q_sample(x0, t, noise)
        output, _ = d.variance.split(d.model_output(model, x_t, t), x0.shape[1])
        target = d.parameterization.target(d, x0, x_t, t, noise)
        huber = mean_flat(F.huber_loss(output, target, reduction="none", delta=self.delta))
        return {"loss": huber, "mse": mean_flat((output - target).detach() ** 2)}


@hookimpl
def register_objectives(register):
    register("huber", HuberLoss)
