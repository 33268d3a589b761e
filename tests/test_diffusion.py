"""GaussianDiffusion's own rules, beside the math that tests/test_gaussian.py and test_oracle.py hold."""

import pytest

from ddpm_kit.errors import DdpmKitError

from helpers import make_diffusion


def test_another_variance_replaces_the_runs_only_when_it_reads_the_same_channels(registry):
    """with_variance: beta-tilde for beta (both fixed) and a variance that reads the learned channels
    for a learned one; a fixed variance for a learned one, or a learned one for a fixed one, is refused
    with what would work."""
    fixed, learned = make_diffusion(registry, T=10), make_diffusion(registry, variance="learned", T=10)
    tilde = registry.build("variance", "fixed_beta_tilde")
    replaced = fixed.with_variance(tilde)
    assert replaced.variance is tilde and replaced.schedule is fixed.schedule and replaced.decoder is fixed.decoder
    with pytest.raises(DdpmKitError, match=r"variance 'fixed_beta_tilde' cannot replace this run's learned "
                                           r"variance 'learned' \(its channels would go unread\)"):
        learned.with_variance(tilde)
    with pytest.raises(DdpmKitError, match=r"variance 'learned' is learned and this run's network has no "
                                           r"channels for it; name a fixed one"):
        fixed.with_variance(registry.build("variance", "learned"))
    assert learned.with_variance(registry.build("variance", "learned")).variance.name == "learned"
