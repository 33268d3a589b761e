"""Pixel statistics of samples against data: an example metric plugin, using ``ddpm_kit.api`` only."""

import numpy as np

from ddpm_kit.api import DdpmKitError, Metric, hookimpl

BINS = 32


def check_pixelstats(num_samples: int = 64, split: str = "test", limit: int | None = None) -> None:
    """Reject what compute would reject, without sampling (``ddpm-kit recipe check`` calls it)."""
    if num_samples < 2:
        raise DdpmKitError(f"metric 'pixelstats' needs num_samples >= 2 (a standard deviation), got {num_samples}")
    if limit is not None and limit < 2:
        raise DdpmKitError(f"metric 'pixelstats' needs limit >= 2 or none, got {limit}")


class PixelStats(Metric):
    """|mean| and |std| gaps between the pixels of N samples and of a data split, in [-1, 1] units.

    A cheap sanity check (a model that drifts dark, or collapses to flat images, shows at once),
    not a measure of sample quality. Figures: ``pixelstats_mean_gap``, ``pixelstats_std_gap``,
    ``pixelstats_sample_mean``, ``pixelstats_data_mean``, ``pixelstats_samples``; both pixel
    histograms (32 bins over [-1, 1]) go to eval/pixelstats_histograms.npy.
    """

    name = "pixelstats"

    def __init__(self, num_samples: int = 64, split: str = "test", limit: int | None = None) -> None:
        check_pixelstats(num_samples, split, limit)
        self.num_samples, self.split, self.limit = num_samples, split, limit

    def compute(self, context):
        fake = context.samples(self.num_samples).double().cpu().numpy()  # the same on every process
        real = context.images(self.split, self.limit).double().cpu().numpy()
        edges = np.linspace(-1.0, 1.0, BINS + 1)
        context.save_array("pixelstats_histograms", np.stack([np.histogram(fake, edges)[0],
                                                              np.histogram(real, edges)[0]]))
        return {"pixelstats_mean_gap": abs(fake.mean() - real.mean()),
                "pixelstats_std_gap": abs(fake.std() - real.std()),
                "pixelstats_sample_mean": fake.mean(), "pixelstats_data_mean": real.mean(),
                "pixelstats_samples": len(fake)}


@hookimpl
def register_metrics(register):
    register("pixelstats", PixelStats, check=check_pixelstats)
