"""Figures written into run folders (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bpd_terms(terms: np.ndarray, path: Path, title: str = "") -> Path:
    """Bits per timestep (L_0..L_{T-1}, log scale) and the cumulative bound from t = T down to 0."""
    plt = _pyplot()
    vb, prior = terms[:, :-1].mean(0), terms[:, -1].mean()
    t = np.arange(len(vb))
    cumulative = prior + np.cumsum(vb[::-1])[::-1]  # bits spent from T down to t
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.semilogy(t, np.maximum(vb, 1e-8))
    a.set(xlabel="timestep t (0-based; 0 is the decoder L_0)", ylabel="bits/dim", title="L_t per timestep")
    b.plot(t, cumulative)
    b.set(xlabel="timestep t", ylabel="bits/dim", title=f"cumulative bound from T: total {cumulative[0]:.3f}")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_rate_distortion(terms: np.ndarray, xstart_mse: np.ndarray, path: Path) -> Path:
    """Fig. 5 of Ho et al.: distortion (RMSE of x0-hat on the [0, 255] scale) and rate
    (cumulative bits/dim received by step t) against t and against each other."""
    plt = _pyplot()
    vb, prior = terms[:, :-1].mean(0), terms[:, -1].mean()
    rate = prior + np.cumsum(vb[::-1])[::-1] - vb  # bits received before decoding at step t
    distortion = np.sqrt(xstart_mse.mean(0)) * 127.5
    t = np.arange(len(vb))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    axes[0].plot(t, distortion)
    axes[0].set(xlabel="timestep t", ylabel="distortion (RMSE, 0..255)")
    axes[1].plot(t, rate)
    axes[1].set(xlabel="timestep t", ylabel="rate (bits/dim)")
    axes[2].plot(rate, distortion)
    axes[2].set(xlabel="rate (bits/dim)", ylabel="distortion (RMSE, 0..255)")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle("rate-distortion along the reverse process (Ho et al. Fig. 5)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_loss_curve(steps: list[int], losses: list[float], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.semilogy(steps, losses)
    ax.set(xlabel="step", ylabel="training loss", title="loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
