"""Reverse-process variances sigma_t^2 (section 3.2): beta_t, beta-tilde_t, or learned."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..interfaces import LearnedVariance, VarianceChoice


class FixedBeta(VarianceChoice):
    """sigma_t^2 = beta_t (Ho's "fixedlarge"); at t=0 the log-variance is log beta-tilde_1,
    which gives a better decoder likelihood (Ho's code)."""

    name = "fixed_beta"
    diffusers_variance_type = "fixed_large"

    def log_variance(self, d, var_output, x_t, t):
        return d.gather("log_betas_clipped", t, x_t)


class FixedBetaTilde(VarianceChoice):
    """sigma_t^2 = beta-tilde_t, the true posterior's variance (Ho's "fixedsmall"), log clipped at t=0."""

    name = "fixed_beta_tilde"
    diffusers_variance_type = "fixed_small"

    def log_variance(self, d, var_output, x_t, t):
        return d.gather("posterior_log_variance_clipped", t, x_t)


class Learned(LearnedVariance):
    """log sigma_t^2 is the raw output of C extra network channels (Ho's "learned")."""

    name = "learned"
    not_in_diffusers = ("its extra channels are a log-variance, and DDPMScheduler reads them as the variance itself "
                        "(variance_type 'learned') or as an interpolation weight ('learned_range'), so the exported "
                        "pipeline would sample NaN")

    def log_variance(self, d, var_output, x_t, t):
        return var_output


@hookimpl
def register_variances(register):
    register("fixed_beta", FixedBeta)
    register("fixed_beta_tilde", FixedBetaTilde)
    register("learned", Learned)
