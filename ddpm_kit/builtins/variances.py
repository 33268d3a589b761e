"""Reverse-process variances sigma_t^2 (section 3.2): beta_t, beta-tilde_t, or learned."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..interfaces import LearnedVariance, VarianceChoice


class FixedBeta(VarianceChoice):
    """sigma_t^2 = beta_t (Ho's "fixedlarge"); at t=0 the log-variance is log beta-tilde_1,
    which gives a better decoder likelihood (Ho's code)."""

    name = "fixed_beta"

    def log_variance(self, d, var_output, x_t, t):
        return d.gather("log_betas_clipped", t, x_t)


class FixedBetaTilde(VarianceChoice):
    """sigma_t^2 = beta-tilde_t, the true posterior's variance (Ho's "fixedsmall"), log clipped at t=0."""

    name = "fixed_beta_tilde"

    def log_variance(self, d, var_output, x_t, t):
        return d.gather("posterior_log_variance_clipped", t, x_t)


class Learned(LearnedVariance):
    """log sigma_t^2 is the raw output of C extra network channels (Ho's "learned")."""

    name = "learned"

    def log_variance(self, d, var_output, x_t, t):
        return var_output


@hookimpl
def register_variances(register):
    register("fixed_beta", FixedBeta)
    register("fixed_beta_tilde", FixedBetaTilde)
    register("learned", Learned)
