"""Feature networks for sample-quality metrics, and the Frechet distance.

A small classifier, trained once on the dataset's labelled train split and cached, gives the
features (penultimate layer) and class probabilities (softmax) where no pretrained network can be
downloaded (docs/evaluation.md). Numbers from different extractors are not comparable.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .cache import atomic_file, cache_root, content_hash


class DigitClassifier(nn.Module):
    """A small CNN: two conv blocks, a 128-d feature layer, and class logits."""

    def __init__(self, channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (image_size // 4) ** 2, 128), nn.ReLU())
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def cache_dir() -> Path:
    """Where feature networks and real-data statistics are cached."""
    return cache_root() / "feature-nets"


def train_classifier(x: torch.Tensor, labels: torch.Tensor, *, epochs: int = 4, seed: int = 0) -> DigitClassifier:
    """Fit the classifier on images in [-1, 1] (Adam, batch 64); deterministic in ``seed``."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = DigitClassifier(x.shape[1], x.shape[-1], int(labels.max()) + 1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        for index in torch.randperm(len(x), generator=g).split(64):
            loss = nn.functional.cross_entropy(net(x[index]), labels[index])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def cached_classifier(key: dict, x: torch.Tensor, labels: torch.Tensor) -> tuple[DigitClassifier, str]:
    """The classifier for ``key`` (dataset and preprocessing), trained once and cached as safetensors."""
    from safetensors.torch import load_file, save_file

    digest = content_hash(key)
    path = cache_dir() / f"classifier-{digest}.safetensors"
    if path.is_file():
        net = DigitClassifier(x.shape[1], x.shape[-1], int(labels.max()) + 1)
        try:
            net.load_state_dict(load_file(str(path)))
            return net.eval(), digest
        except Exception as exc:  # truncated or garbage file (safetensors' own errors), or another net's
            print(f"warning: cached classifier {path} is damaged ({type(exc).__name__}); training it again",
                  file=sys.stderr, flush=True)
    with torch.inference_mode(False), torch.enable_grad():  # metrics run under inference_mode
        net = train_classifier(x.clone(), labels.clone())
    with atomic_file(path) as tmp:  # processes of a run may race to write it
        save_file(net.state_dict(), str(tmp))
    return net, digest


@torch.inference_mode()
def features_and_probs(net: DigitClassifier, x: torch.Tensor, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    feats, probs = [], []
    for batch in x.split(batch_size):
        f = net.body(batch)  # the 128-d features
        feats.append(f.double().numpy())
        probs.append(net.head(f).softmax(-1).double().numpy())
    return np.concatenate(feats), np.concatenate(probs)


@dataclass(frozen=True)
class FeatureStats:
    """A Gaussian fitted to features (mean, covariance) and the number of rows it was fitted to."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def fit(cls, features: np.ndarray) -> FeatureStats:
        return cls(features.mean(0), np.atleast_2d(np.cov(features, rowvar=False)), len(features))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mu": self.mu, "sigma": self.sigma, "n": np.asarray(self.n)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> FeatureStats:
        return cls(arrays["mu"], arrays["sigma"], int(arrays["n"]))


def frechet_distance(a: np.ndarray | FeatureStats, b: np.ndarray | FeatureStats) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to features
    (Heusel et al. 2017); ``a`` and ``b`` are feature rows or their fitted ``FeatureStats``.

    Tr (S_a S_b)^(1/2) = Tr (S_a^(1/2) S_b S_a^(1/2))^(1/2), a symmetric PSD form computed with
    eigh: stable for the singular covariances of features with dead units.
    """
    a, b = (x if isinstance(x, FeatureStats) else FeatureStats.fit(x) for x in (a, b))
    return _distance_from(a)(b)


def _distance_from(a: FeatureStats) -> Callable[[FeatureStats], float]:
    """``frechet_distance(a, .)`` with S_a^(1/2) computed once (for many b against one reference)."""
    w, v = np.linalg.eigh(a.sigma)
    sa_half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    def distance(b: FeatureStats) -> float:
        tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(sa_half @ b.sigma @ sa_half), 0, None)).sum()
        return float(((a.mu - b.mu) ** 2).sum() + np.trace(a.sigma) + np.trace(b.sigma) - 2 * tr_covmean)

    return distance


def frechet_distance_stderr(reference: FeatureStats, features: np.ndarray, baseline: np.ndarray | None = None,
                            rounds: int = 100, seed: int = 0) -> float:
    """The bootstrap standard error (Efron & Tibshirani 1993, ch. 6) of ``frechet_distance(reference,
    features)`` over the draw of the sample rows: the spread of the distance over ``rounds`` resamples
    of the rows with replacement, the reference held fixed. FID from a few thousand samples moves by
    several units from one set of samples to the next; this says by how much.

    With ``baseline`` (another model's rows, row i drawn from the same noise as ``features``' row i),
    the standard error of FID(features) - FID(baseline), the pairs resampled together: paired samples
    share much of their error, so a difference is measured more precisely than either FID."""
    distance = _distance_from(reference)
    rng = np.random.default_rng(seed)
    rows = len(features)
    draws = []
    for _ in range(rounds):
        picked = rng.integers(0, rows, rows)
        fid = distance(FeatureStats.fit(features[picked]))
        draws.append(fid if baseline is None else fid - distance(FeatureStats.fit(baseline[picked])))
    return float(np.std(draws, ddof=1))


def confident_rows(probs: np.ndarray, threshold: float = 0.9) -> np.ndarray:
    """Whether each image's most likely class has probability above ``threshold``."""
    return probs.max(1) > threshold


def confident_fraction(probs: np.ndarray, threshold: float = 0.9) -> float:
    """The fraction of images whose most likely class has probability above ``threshold``."""
    return float(confident_rows(probs, threshold).mean())


def paired_difference(reference: FeatureStats, features: np.ndarray, confident: np.ndarray,
                      baseline: np.ndarray, baseline_confident: np.ndarray) -> dict[str, float]:
    """FID(features) - FID(baseline) against ``reference`` with its paired bootstrap standard error,
    and the confident fractions' difference with the standard error of the per-row differences:
    for two models' samples drawn row by row from the same noise (the same sample seed)."""
    distance = _distance_from(reference)
    diff = confident.astype(float) - baseline_confident.astype(float)
    return {"fid": distance(FeatureStats.fit(features)) - distance(FeatureStats.fit(baseline)),
            "fid_stderr": frechet_distance_stderr(reference, features, baseline),
            "confident": float(diff.mean()), "confident_stderr": float(diff.std(ddof=1) / np.sqrt(len(diff)))}


def stats_path(key: dict) -> Path:
    """Where the arrays for ``key`` (extractor, data settings, split, rows) are cached."""
    return cache_dir() / f"stats-{content_hash(key)}.npz"


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an .npz atomically (processes and runs may race to write the same cache entry)."""
    with atomic_file(path) as tmp:
        np.savez(tmp, **arrays)


def classifier_score(probs: np.ndarray) -> float:
    """The Inception Score's form with the classifier: exp E_x KL(p(y|x) || p(y))."""
    marginal = probs.mean(0, keepdims=True)
    kl = (probs * (np.log(probs + 1e-12) - np.log(marginal + 1e-12))).sum(1)
    return float(np.exp(kl.mean()))
