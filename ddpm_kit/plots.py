"""Figures written into run folders (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bpd_terms(terms: np.ndarray | dict[str, np.ndarray], path: Path, title: str = "") -> Path:
    """Bits per timestep (L_0..L_{T-1}, log scale) and the cumulative bound from t = T down to 0:
    of one run's terms [N, T+1], or of several runs overlaid ({name: terms}, one line each)."""
    plt = _pyplot()
    named = terms if isinstance(terms, dict) else {"": terms}
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, run_terms in named.items():
        vb, prior = run_terms[:, :-1].mean(0), run_terms[:, -1].mean()
        t = np.arange(len(vb))
        cumulative = prior + np.cumsum(vb[::-1])[::-1]  # bits spent from T down to t
        a.semilogy(t, np.maximum(vb, 1e-8), label=name or None)
        b.plot(t, cumulative, label=f"{name}: {cumulative[0]:.3f}" if name else None)
    a.set(xlabel="timestep t (0-based; 0 is the decoder L_0)", ylabel="bits/dim", title="L_t per timestep")
    b.set(xlabel="timestep t", ylabel="bits/dim",
          title=f"cumulative bound from T: total {cumulative[0]:.3f}" if len(named) == 1 else "cumulative bound from T")
    return _finish(fig, (a, b), path, title, legend=len(named) > 1)


def plot_rate_distortion(terms: np.ndarray | dict[str, tuple[np.ndarray, np.ndarray]],
                         xstart_mse: np.ndarray | None, path: Path) -> Path:
    """Fig. 5 of Ho et al.: distortion (RMSE of x0-hat on the [0, 255] scale) and rate
    (cumulative bits/dim received by step t) against t and against each other; of one run's
    (terms, x0-hat errors), or of several overlaid ({name: (terms, errors)}, xstart_mse None)."""
    plt = _pyplot()
    named = terms if isinstance(terms, dict) else {"": (terms, xstart_mse)}
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for name, (run_terms, mse) in named.items():
        vb, prior = run_terms[:, :-1].mean(0), run_terms[:, -1].mean()
        rate = prior + np.cumsum(vb[::-1])[::-1] - vb  # bits received before decoding at step t
        distortion = np.sqrt(mse.mean(0)) * 127.5
        t = np.arange(len(vb))
        axes[0].plot(t, distortion, label=name or None)
        axes[1].plot(t, rate, label=name or None)
        axes[2].plot(rate, distortion, label=name or None)
    axes[0].set(xlabel="timestep t", ylabel="distortion (RMSE, 0..255)")
    axes[1].set(xlabel="timestep t", ylabel="rate (bits/dim)")
    axes[2].set(xlabel="rate (bits/dim)", ylabel="distortion (RMSE, 0..255)")
    title = "rate-distortion along the reverse process (Ho et al. Fig. 5)"
    return _finish(fig, axes, path, title, legend=len(named) > 1)


def plot_loss_curve(steps: list[int] | dict[str, tuple[list[int], list[float]]], losses: list[float] | None,
                    path: Path) -> Path:
    """The training loss against the step (log scale): one run's, or several overlaid
    ({name: (steps, losses)}, losses None)."""
    plt = _pyplot()
    named = steps if isinstance(steps, dict) else {"": (steps, losses)}
    fig, ax = plt.subplots(figsize=(5, 3.2) if len(named) == 1 else (7, 4))
    for name, (run_steps, run_losses) in named.items():
        ax.semilogy(run_steps, run_losses, label=name or None)
    ax.set(xlabel="step", ylabel="training loss", title="loss")
    return _finish(fig, [ax], path, "", legend=len(named) > 1)


def plot_sample_rows(named: dict[str, np.ndarray], path: Path) -> Path:
    """One row of samples per run (uint8 [k, C, H, W] each; the same sample seeds give the same
    starting noise to every run of the same data shape), labelled with the run's name."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(named), 1, figsize=(1.0 * max(len(v) for v in named.values()) + 1.5,
                                                      1.1 * len(named) + 0.3), squeeze=False)
    for ax, (name, images) in zip(axes[:, 0], named.items()):
        pad = np.full((images.shape[1], images.shape[2], 1), 255, np.uint8)
        strip = np.concatenate([np.concatenate([img, pad], axis=2) for img in images], axis=2)
        ax.imshow(strip[0] if strip.shape[0] == 1 else strip.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
    return _finish(fig, [], path, "", legend=False)


def _finish(fig, axes, path: Path, title: str, legend: bool) -> Path:
    for ax in axes:
        ax.grid(alpha=0.3)
        if legend:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path
