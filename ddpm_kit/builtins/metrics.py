"""Metric plugins."""

from __future__ import annotations

import math

import torch

from ..hookspecs import hookimpl
from ..interfaces import Metric


class BitsPerDim(Metric):
    """The full variational bound L_T + sum L_{t-1} + L_0 in bits/dim on the test split (eq. 5)."""

    name = "bpd"

    def __init__(self, limit: int | None = 256, batch_size: int = 64, split: str = "test") -> None:
        self.limit, self.batch_size, self.split = limit, batch_size, split

    def compute(self, context) -> dict[str, float]:
        x = context.images(self.split, self.limit)
        totals, terms = [], []
        g = torch.Generator(device="cpu").manual_seed(context.seed)
        for batch in x.split(self.batch_size):
            out = context.diffusion.calc_bpd_loop(context.model, batch.to(context.device), generator=None
                                                  if context.device.type != "cpu" else g)
            totals.append(out["total_bpd"].cpu())
            terms.append(torch.cat([out["vb"], out["prior_bpd"][:, None]], dim=1).cpu())
        total = torch.cat(totals).double()
        context.save_array("bpd_terms", torch.cat(terms).numpy())
        return {"bpd": total.mean().item(), "bpd_stderr": total.std().item() / math.sqrt(len(total)),
                "bpd_images": float(len(total))}


@hookimpl
def register_metrics(register):
    register("bpd", BitsPerDim)
