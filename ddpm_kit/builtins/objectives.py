"""Training objectives: L_simple (eq. 14, generalised to any parameterization) and the bound L."""

from __future__ import annotations

from ..errors import DdpmKitError
from ..gaussian import mean_flat
from ..hookspecs import hookimpl
from ..interfaces import Objective


class SimpleLoss(Objective):
    """Unweighted MSE between the network's mean output and the parameterization's target
    (Ho's "mse"): L_simple for eps; ||mu-tilde - mu_theta||^2 for mu."""

    name = "simple"

    def validate_diffusion(self, d):
        if d.variance.learned:
            raise DdpmKitError(
                f"objective 'simple' cannot train variance '{d.variance.name}' (its channels get no "
                "gradient); use objective 'vlb', or a fixed variance")

    def losses(self, d, model, x0, t, noise):
        x_t = d.q_sample(x0, t, noise)
        output = d.model_output(model, x_t, t)
        mean_part, _ = d.variance.split(output, x0.shape[1])
        target = d.parameterization.target(d, x0, x_t, t, noise)
        mse = mean_flat((target - mean_part) ** 2)
        return {"loss": mse, "mse": mse}


class VariationalBound(Objective):
    """The bound term L_{t-1} (or L_0 at t=0) at the sampled t, in bits/dim (Ho's "kl")."""

    name = "vlb"

    def __init__(self, clip_denoised: bool = False) -> None:
        self.clip_denoised = clip_denoised

    def losses(self, d, model, x0, t, noise):
        x_t = d.q_sample(x0, t, noise)
        vb = d.vb_terms_bpd(model, x0, x_t, t, clip_denoised=self.clip_denoised)["output"]
        return {"loss": vb, "vb": vb}


@hookimpl
def register_objectives(register):
    register("simple", SimpleLoss)
    register("vlb", VariationalBound)
