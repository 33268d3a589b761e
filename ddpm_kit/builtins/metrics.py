"""Metric plugins: bits/dim (the full bound) and sample quality (FID and a classifier score)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import DdpmKitError
from ..hookspecs import hookimpl
from ..interfaces import Metric


class BitsPerDim(Metric):
    """The full variational bound L_T + sum L_{t-1} + L_0 in bits/dim on a split (eq. 5).

    Saves per-image terms (eval/bpd_terms.npy: L_0..L_{T-1}, L_T), x0-hat errors, and plots of
    bits per timestep and of rate-distortion (Fig. 5).
    """

    name = "bpd"

    def __init__(self, limit: int | None = 256, batch_size: int = 64, split: str = "test",
                 timesteps_per_batch: int = 1, clip_denoised: bool = False) -> None:
        self.limit, self.batch_size, self.split = limit, batch_size, split
        self.timesteps_per_batch, self.clip_denoised = timesteps_per_batch, clip_denoised

    def compute(self, context) -> dict[str, float]:
        from ..plots import plot_bpd_terms, plot_rate_distortion

        x = context.images(self.split, self.limit)
        terms, mses = [], []
        g = torch.Generator(device=context.device).manual_seed(context.seed)
        for batch in x.split(self.batch_size):
            out = context.diffusion.calc_bpd_loop(context.model, batch.to(context.device), generator=g,
                                                  clip_denoised=self.clip_denoised,
                                                  timesteps_per_batch=self.timesteps_per_batch)
            terms.append(torch.cat([out["vb"], out["prior_bpd"][:, None]], dim=1).double().cpu())
            mses.append(out["xstart_mse"].double().cpu())
        all_terms, all_mse = torch.cat(terms).numpy(), torch.cat(mses).numpy()
        context.save_array("bpd_terms", all_terms)
        context.save_array("xstart_mse", all_mse)
        plot_bpd_terms(all_terms, context.run.eval / "bpd_per_timestep.png")
        plot_rate_distortion(all_terms, all_mse, context.run.eval / "rate_distortion.png")
        total = all_terms.sum(1)
        return {"bpd": float(total.mean()), "bpd_stderr": float(total.std(ddof=1) / math.sqrt(len(total))),
                "bpd_L0": float(all_terms[:, 0].mean()), "bpd_prior": float(all_terms[:, -1].mean()),
                "bpd_images": float(len(total))}


class ClassifierFID(Metric):
    """FID and the Inception-Score counterpart with features of a small classifier trained once on
    the labelled train split (cached). For digit-like data, offline. Names its extractor."""

    name = "fid"

    def __init__(self, num_samples: int = 500, split: str = "test", label_column: str = "label") -> None:
        self.num_samples, self.split, self.label_column = num_samples, split, label_column

    def compute(self, context) -> dict[str, float]:
        from ..features import cached_classifier, classifier_score, features_and_probs, frechet_distance

        train_x, train_y = context.labelled("train", self.label_column)
        net, digest = cached_classifier(context.data_key(), train_x, train_y)
        real = context.images(self.split, None)
        fake = context.samples(self.num_samples)
        f_real, p_real = features_and_probs(net, real)
        f_fake, p_fake = features_and_probs(net, fake)
        f_train, _ = features_and_probs(net, train_x[: len(real)])
        test_x, test_y = context.labelled(self.split, self.label_column)
        accuracy = float((features_and_probs(net, test_x)[1].argmax(1) == test_y.numpy()).mean())
        return {"fid": frechet_distance(f_real, f_fake), "fid_real_floor": frechet_distance(f_real, f_train),
                "classifier_score": classifier_score(p_fake), "classifier_score_real": classifier_score(p_real),
                "fid_samples": float(len(fake)), "fid_extractor": f"classifier-{digest} (test acc {accuracy:.3f})"}


class InceptionFID(Metric):
    """FID with Inception v3 (torchmetrics / torch-fidelity) from a weights file the user provides
    (pt_inception-2015-12-05-6726825d.pth); nothing is downloaded."""

    name = "fid_inception"

    def __init__(self, weights: str, num_samples: int = 10000, split: str = "test") -> None:
        self.weights, self.num_samples, self.split = Path(weights).expanduser(), num_samples, split

    def compute(self, context) -> dict[str, float]:
        if not self.weights.is_file():
            raise DdpmKitError(f"metric 'fid_inception': weights file '{self.weights}' not found; download "
                               "pt_inception-2015-12-05-6726825d.pth (torch-fidelity's FID Inception) once and "
                               "set eval.metrics[].weights, or use metric 'fid' (offline classifier features)")
        try:
            from torchmetrics.image.fid import FrechetInceptionDistance
        except ImportError:
            raise DdpmKitError("metric 'fid_inception' needs torchmetrics and torch-fidelity: "
                               "pip install 'ddpm-kit[fid]'") from None
        fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(self.weights))
        to_rgb = (lambda x: x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)
        for real in context.images(self.split, self.num_samples).split(100):
            fid.update(to_rgb(((real + 1) * 127.5).round().to(torch.uint8)), real=True)
        for fake in context.samples(self.num_samples).split(100):
            fid.update(to_rgb(((fake + 1) * 127.5).round().to(torch.uint8)), real=False)
        return {"fid_inception": float(fid.compute()), "fid_inception_samples": float(self.num_samples)}


@hookimpl
def register_metrics(register):
    register("bpd", BitsPerDim)
    register("fid", ClassifierFID)
    register("fid_inception", InceptionFID)
