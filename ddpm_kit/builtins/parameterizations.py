"""What the network predicts (section 3.2): eps (eq. 11), x0, or mu = the posterior mean."""

from __future__ import annotations

import torch

from ..hookspecs import hookimpl
from ..interfaces import Parameterization


class EpsPrediction(Parameterization):
    """The network predicts the noise eps; mu_theta follows from eq. 11."""

    name = "eps"
    diffusers_prediction_type = "epsilon"

    def from_x0(self, d, x0, x_t, t):
        return d.eps_from_x0(x_t, t, x0)

    def predict_x0(self, d, output, x_t, t):
        return d.x0_from_eps(x_t, t, output)

    def predict_eps(self, d, output, x_t, t):
        return output

    def target(self, d, x0, x_t, t, noise):
        return noise


class X0Prediction(Parameterization):
    """The network predicts x0 directly."""

    name = "x0"
    diffusers_prediction_type = "sample"

    def from_x0(self, d, x0, x_t, t):
        return x0

    def predict_x0(self, d, output, x_t, t):
        return output


class MeanPrediction(Parameterization):
    """The network predicts mu-tilde (the mean of x_{t-1}) directly.

    As in Ho's code ("xprev"), clipping x0-hat does not change the mean here.
    """

    name = "mu"
    chain_dependent = True  # the mean of x_{t-1}: on a respaced chain, the previous step is another

    def from_x0(self, d, x0, x_t, t):
        return d.q_posterior_mean(x0, x_t, t)

    def predict_x0(self, d, output, x_t, t):
        return d.x0_from_posterior_mean(x_t, t, output)

    def predict_mean(self, d, output, x_t, t, x0_hat) -> torch.Tensor:
        return output


@hookimpl
def register_parameterizations(register):
    register("eps", EpsPrediction)
    register("x0", X0Prediction)
    register("mu", MeanPrediction)
