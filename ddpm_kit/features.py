"""Feature networks for sample-quality metrics, and the Frechet distance.

For digit-like data no pretrained network can be downloaded here, so a small classifier is trained
once on the dataset's labelled train split and cached; its penultimate layer gives the features
(like Inception's pool3 for FID) and its softmax the class probabilities (for the Inception-Score
counterpart). Numbers from different extractors are not comparable, so every result names its
extractor.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn


class DigitClassifier(nn.Module):
    """A small CNN: two conv blocks, a 128-d feature layer, and class logits."""

    def __init__(self, channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (image_size // 4) ** 2, 128), nn.ReLU())
        self.head = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def cache_dir() -> Path:
    root = os.environ.get("DDPM_KIT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ddpm-kit"
    return Path(root) / "feature-nets"


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

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"classifier-{digest}.safetensors"
    num_classes = int(labels.max()) + 1
    if path.is_file():
        net = DigitClassifier(x.shape[1], x.shape[-1], num_classes)
        net.load_state_dict(load_file(str(path)))
        return net.eval(), digest
    with torch.inference_mode(False), torch.enable_grad():  # metrics run under inference_mode
        net = train_classifier(x.clone(), labels.clone())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # processes of a run may race to write it
    save_file(net.state_dict(), str(tmp))
    tmp.replace(path)
    return net, digest


@torch.inference_mode()
def features_and_probs(net: DigitClassifier, x: torch.Tensor, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    feats, probs = [], []
    for batch in x.split(batch_size):
        f = net.features(batch)
        feats.append(f.double().numpy())
        probs.append(net.head(f).softmax(-1).double().numpy())
    return np.concatenate(feats), np.concatenate(probs)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to features.

    Tr (S_a S_b)^(1/2) = Tr (S_a^(1/2) S_b S_a^(1/2))^(1/2), a symmetric PSD form computed with
    eigh: stable for the singular covariances of features with dead units.
    """
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(s_a)
    sa_half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(sa_half @ s_b @ sa_half), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_covmean)


def classifier_score(probs: np.ndarray) -> float:
    """The Inception Score's form with the classifier: exp E_x KL(p(y|x) || p(y))."""
    marginal = probs.mean(0, keepdims=True)
    kl = (probs * (np.log(probs + 1e-12) - np.log(marginal + 1e-12))).sum(1)
    return float(np.exp(kl.mean()))
