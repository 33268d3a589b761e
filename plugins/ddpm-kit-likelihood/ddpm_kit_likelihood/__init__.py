"""The probability-flow ODE likelihood of a trained ddpm-kit model (Song et al. 2021), as a metric:

    ddpm-kit evaluate RUN --metric bpd_ode [--param limit=64 --param probes=2]
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ddpm_kit.api import DdpmKitError, Metric, hookimpl

from .ode import DEQUANTIZATION_OFFSET_BITS, ProbabilityFlow, bits_per_dim, dequantize, ode_log_likelihood

__all__ = ["ODEBitsPerDim", "ProbabilityFlow", "bits_per_dim", "dequantize", "ode_log_likelihood",
           "DEQUANTIZATION_OFFSET_BITS"]


class ODEBitsPerDim(Metric):
    """bits/dim of uniformly dequantized test images under the probability-flow ODE's density.

    Each image is integrated ``probes`` times with its own Hutchinson probes (Rademacher or
    Gaussian), and its figure is their mean. ``bpd_ode_stderr`` is the standard error over images
    (data, dequantization and trace noise together); ``bpd_ode_trace_stderr`` the part from the
    trace estimator alone (the spread between an image's probes; with probes >= 2). Batches of
    ``batch_size`` images are fixed whatever the number of processes, and the dequantization
    noise and probes of image i come from its own generator, so every process count gives the same
    figures; no process waits on another inside the solver (k-diffusion's ranks that disagree on
    the number of steps cannot hang here).
    """

    name = "bpd_ode"

    def __init__(self, limit: int | None = 64, batch_size: int = 16, split: str = "test", probes: int = 2,
                 probe: str = "rademacher", trace: str = "hutchinson", rtol: float = 1e-5, atol: float = 1e-5,
                 method: str = "dopri5") -> None:
        if probes < 1 or probe not in ("rademacher", "gaussian") or trace not in ("hutchinson", "exact"):
            raise DdpmKitError("metric 'bpd_ode': probes >= 1, probe 'rademacher' or 'gaussian', "
                               f"trace 'hutchinson' or 'exact' (got {probes}, {probe!r}, {trace!r})")
        self.limit, self.batch_size, self.split, self.probes, self.probe = limit, batch_size, split, probes, probe
        self.trace, self.solver = trace, {"rtol": rtol, "atol": atol, "method": method}

    def compute(self, context) -> dict[str, float]:
        x = context.images(self.split, self.limit)
        dims = x[0].numel()

        def batch(rows: range) -> np.ndarray:  # [b, probes + 1]: bits/dim per probe, the solver's NFE
            with torch.inference_mode(False):  # the divergence needs autograd: no inference tensors
                return solve(rows)

        def solve(rows: range) -> np.ndarray:
            noise = context.image_noise(rows)
            mine = x[rows.start:rows.stop].clone().to(context.device)
            images = dequantize(mine, noise(mine))
            # probe-major ([probe 0 of every image], [probe 1 ...]): a conditional run's bound labels
            # repeat the same way (ConditionedModel tiles them to the batch)
            draws = torch.cat([noise(images) for _ in range(self.probes)])
            probes = draws.sign() if self.probe == "rademacher" else draws
            out = ode_log_likelihood(context.diffusion, context.model_for(self.split, rows),
                                     images.repeat(self.probes, *([1] * (images.ndim - 1))), trace=self.trace,
                                     probes=probes, **self.solver)
            bpd = bits_per_dim(out.log_p.double().cpu(), dims).reshape(self.probes, len(rows)).T
            return np.concatenate([bpd, np.full((len(rows), 1), out.nfe)], 1)

        both = context.map_batches(len(x), self.batch_size, batch, desc=f"{self.name} (probability-flow ODE)")
        per_probe, nfe = both[:, :-1], both[:, -1]
        context.save_array(self.name, per_probe)
        per_image = per_probe.mean(1)
        figures = {"bpd_ode": float(per_image.mean()),
                   "bpd_ode_stderr": float(per_image.std(ddof=1) / math.sqrt(len(per_image))),
                   "bpd_ode_nfe": float(nfe.mean()), "bpd_ode_images": float(len(per_image)),
                   "bpd_ode_probes": float(self.probes), "bpd_ode_trace": f"{self.trace} ({self.probe})",
                   "bpd_ode_dequantization": "uniform, (k + u) / 256"}
        if self.probes > 1 and self.trace == "hutchinson":
            within = per_probe.var(1, ddof=1).mean()
            figures["bpd_ode_trace_stderr"] = float(math.sqrt(within / per_probe.size))
        return figures


@hookimpl
def register_metrics(register):
    register("bpd_ode", ODEBitsPerDim)
