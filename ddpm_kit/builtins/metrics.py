"""Metric plugins: bits/dim (the full bound) and sample quality (FID and a classifier score)."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..diffusion import GaussianDiffusion
from ..errors import DdpmKitError, prefixed
from ..hookspecs import hookimpl
from ..interfaces import Metric, Model


class BitsPerDim(Metric):
    """The full variational bound L_T + sum L_{t-1} + L_0 in bits/dim on a split (eq. 5).

    Image i's noise comes from its own generator (seed, i), so its terms do not depend on the batch
    size or the number of processes. Its settings, files and figures: docs/evaluation.md.

    A plugin computes the bound of another reverse process of the same network (Analytic-DPM's
    variance, say) by subclassing it with its own ``name`` and overriding ``chain``; its figures and
    files are named after ``label`` (the name and its settings).
    """

    name = "bpd"

    def __init__(self, limit: int | None = 256, batch_size: int = 64, split: str = "test",
                 timesteps_per_batch: int = 1, clip_denoised: bool = False, steps: int | None = None,
                 variance: str | None = None) -> None:
        self.limit, self.batch_size, self.split = limit, batch_size, split
        self.timesteps_per_batch, self.clip_denoised = timesteps_per_batch, clip_denoised
        self.steps, self.variance = steps, variance

    @property
    def label(self) -> str:
        """The metric's name with the settings that change what it measures (variance, steps, a split
        other than test, clip_denoised): what its figures and files are called."""
        settings = [self.variance, self.steps, None if self.split == "test" else self.split,
                    "clip" if self.clip_denoised else None]
        return "_".join([self.name] + [str(v) for v in settings if v is not None])

    def chain(self, context) -> tuple[GaussianDiffusion, Callable[[Model], Model]]:
        """The diffusion whose bound is computed, and how the network is called on it (a respaced
        chain's ``on_original_timesteps``): the run's own, respaced to ``steps``, with ``variance``."""
        from ..respacing import on_original_timesteps, respace

        d = context.diffusion
        with prefixed(f"metric '{self.name}'"):
            if self.variance is not None:
                d = d.with_variance(context.components.registry.build("variance", self.variance, {}))
            if self.steps is None:
                return d, lambda model: model
            short, timestep_map = respace(d, self.steps)  # steps checked by respacing.validate_steps
        return short, lambda model: on_original_timesteps(model, timestep_map)

    def compute(self, context) -> dict[str, float]:
        from ..plots import plot_bpd_terms, plot_rate_distortion
        from ..progress import progress_bar

        diffusion, call = self.chain(context)
        x = context.images(self.split, self.limit)
        T = diffusion.num_timesteps
        my_batches = len(context.my_share(len(x), self.batch_size))
        bar = progress_bar(total=my_batches * T, desc=f"{self.label} ({my_batches} batches x {T} timesteps)",
                           unit="t", enabled=context.is_main_process)

        def terms_and_mse(rows: range) -> np.ndarray:  # [b, T + 1 + T]: L_0..L_{T-1}, L_T, x0-hat errors
            out = diffusion.calc_bpd_loop(
                call(context.model_for(self.split, rows)), x[rows.start:rows.stop].to(context.device),
                clip_denoised=self.clip_denoised, noise=context.image_noise(rows),
                timesteps_per_batch=self.timesteps_per_batch, progress=bar.update)
            return torch.cat([out["vb"], out["prior_bpd"][:, None], out["xstart_mse"]], dim=1).double().cpu().numpy()

        with bar:
            both = context.map_batches(len(x), self.batch_size, terms_and_mse)
        all_terms, all_mse = both[:, :T + 1], both[:, T + 1:]

        def file(kind: str, suffix: str = ".npy"):
            return context.run.bpd_file(kind, self.label, suffix, out=context.out)

        context.save_array(file("bpd_terms"), all_terms)
        context.save_array(file("xstart_mse"), all_mse)
        if context.is_main_process:
            plot_bpd_terms(all_terms, file("bpd_per_timestep", ".png"))
            plot_rate_distortion(all_terms, all_mse, file("rate_distortion", ".png"))
        total = all_terms.sum(1)
        n = self.label
        return {n: float(total.mean()), f"{n}_stderr": float(total.std(ddof=1) / math.sqrt(len(total))),
                f"{n}_L0": float(all_terms[:, 0].mean()), f"{n}_prior": float(all_terms[:, -1].mean()),
                f"{n}_images": float(len(total))}


class ClassifierFID(Metric):
    """FID with features of a small classifier trained once on the labelled train split (cached),
    beside its real-vs-real floor at the same sample count, and how many samples the classifier
    labels with confidence: for digit-like data, offline. Names its extractor.

    Each figure it reports, and eval/fid_features_<N>[_<sampler tag>].npz (what ``ddpm-kit report``
    compares index by index), is described in docs/evaluation.md. The test split's and the floor's
    statistics depend only on the extractor and the data settings and are cached.
    """

    name = "fid"

    def __init__(self, num_samples: int = 500, split: str = "test", label_column: str = "label") -> None:
        self.num_samples, self.split, self.label_column = num_samples, split, label_column

    def compute(self, context) -> dict[str, float]:
        from ..features import (FeatureStats, cached_classifier, frechet_distance, frechet_distance_stderr,
                                save_arrays)

        train_x, train_y = context.labelled("train", self.label_column)
        with context.state.main_process_first():  # the main process trains and caches it, the others load it
            net, digest = cached_classifier(context.data_key(), train_x, train_y)
        real, real_y = context.labelled(self.split, self.label_column)
        fake, fake_y = context.labelled_samples(self.num_samples)
        floor_n = min(len(fake), len(train_x))
        key = {"extractor": f"classifier-{digest}", "data": context.data_key()}
        summary = partial(_feature_summary, context, net, int(train_y.max()) + 1)
        test = context.cached({**key, "split": self.split, "rows": len(real)},
                              lambda: summary(real, f"features: {self.split} split", real_y))
        train = context.cached({**key, "split": "train", "rows": floor_n},
                               lambda: summary(train_x[:floor_n], "features: train (floor)"))
        samples = summary(fake, "features: samples", fake_y, keep_features=True)
        test_stats, train_stats, sample_stats = (FeatureStats.from_arrays(a) for a in (test, train, samples))
        confident = float(samples["confident"])
        if context.is_main_process:  # for paired comparisons between runs (ddpm-kit report)
            save_arrays(context.run.features_file(len(fake), context.sample_tag, out=context.out), {
                "features": samples["features"], "confident": samples["confident_rows"],
                **{f"reference_{k}": v for k, v in test_stats.arrays().items()},
                "extractor": np.asarray(f"classifier-{digest}"), "sample_seed": np.asarray(context.samples_seed)})
        return {**class_accuracy(samples, fake_y), "fid": frechet_distance(test_stats, sample_stats),
                "fid_stderr": frechet_distance_stderr(test_stats, samples["features"]),
                "fid_real_floor": frechet_distance(test_stats, train_stats),
                "confident": confident, "confident_stderr": math.sqrt(confident * (1 - confident) / len(fake)),
                "confident_real": float(test["confident"]),
                "classifier_score": float(samples["classifier_score"]),
                "classifier_score_real": float(test["classifier_score"]),
                "fid_samples": float(len(fake)), "fid_floor_images": float(floor_n),
                "fid_extractor": f"classifier-{digest} (test acc {float(test['accuracy']):.3f})"}


def _feature_summary(context, net, num_classes: int, x: torch.Tensor, what: str, labels: torch.Tensor | None = None,
                     keep_features: bool = False) -> dict[str, np.ndarray]:
    """A set of images as the classifier sees it: the Gaussian of its features, the confident
    fraction, the classifier score and (given labels) the accuracy. Work shared by the processes."""
    from ..features import FeatureStats, classifier_score, confident_fraction, confident_rows, features_and_probs

    both = context.map_rows(x, lambda b: np.concatenate(features_and_probs(net, b), 1), desc=what)
    feats, probs = both[:, :-num_classes], both[:, -num_classes:]
    out = {**FeatureStats.fit(feats).arrays(), "confident": np.asarray(confident_fraction(probs)),
           "classifier_score": np.asarray(classifier_score(probs))}
    if keep_features:
        out["features"], out["confident_rows"] = feats, confident_rows(probs)
    if labels is not None:
        out["accuracy"] = np.asarray((probs.argmax(1) == labels.numpy()).mean())
        out["predicted"] = probs.argmax(1)
    return out


def class_accuracy(samples: dict[str, np.ndarray], labels: torch.Tensor | None) -> dict[str, float]:
    """For samples drawn for classes: the fraction the classifier labels as the class they were
    drawn for, overall (``class_accuracy``) and per class (``class_accuracy_<k>``); labels -1 (no
    label) are left out. Nothing for unconditional samples."""
    if labels is None:
        return {}
    y = labels.numpy()
    hit = samples["predicted"] == y
    out = {f"class_accuracy_{k}": float(hit[y == k].mean()) for k in np.unique(y[y >= 0])}
    return {"class_accuracy": float(hit[y >= 0].mean()), **out} if (y >= 0).any() else {}


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
        # each process adds its share; torchmetrics sums the feature statistics over processes in compute()
        for images, real in ((context.images(self.split, self.num_samples), True),
                             (context.samples(self.num_samples), False)):
            for rows in context.my_share(len(images), 100):
                fid.update(to_rgb(((images[rows.start:rows.stop] + 1) * 127.5).round().to(torch.uint8)), real=real)
        return {"fid_inception": float(fid.compute()), "fid_inception_samples": float(self.num_samples)}


@hookimpl
def register_metrics(register):
    register("bpd", BitsPerDim)
    register("fid", ClassifierFID)
    register("fid_inception", InceptionFID)
