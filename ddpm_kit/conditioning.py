"""Conditioning: class labels from the data to the backbone; label dropout and classifier-free guidance.

A conditional run calls the backbone ``model(x, t, **cond)`` (``Conditioning``: keyword tensors, batch
first); samplers, objectives and metrics get the model with it bound (``bind``, ``guided``) and call
``model(x, t)`` as before (docs/conditioning.md). ``NULL_LABEL`` (-1) is "no label".
"""

from __future__ import annotations

import torch

from .interfaces import Model

NULL_LABEL = -1
Conditioning = dict[str, torch.Tensor]


def repeat_to(value: torch.Tensor, batch: int) -> torch.Tensor:
    """``value`` [b, ...] for a batch of ``batch`` = k b rows: the rows repeated k times, as
    ``calc_bpd_loop`` stacks k timesteps of one batch (``x0.repeat(k)``)."""
    if batch == value.shape[0]:
        return value
    if batch % value.shape[0]:
        raise ValueError(f"a batch of {batch} rows does not repeat conditioning of {value.shape[0]} rows")
    return value.repeat(batch // value.shape[0], *([1] * (value.ndim - 1)))


class ConditionedModel:
    """``model(x, t)`` that calls ``model(x, t, **cond)``."""

    def __init__(self, model: Model, cond: Conditioning) -> None:
        self.model, self.cond = model, cond

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x, t, **{k: repeat_to(v.to(x.device), x.shape[0]) for k, v in self.cond.items()})


def bind(model: Model, labels: torch.Tensor | None) -> Model:
    """The model with class ``labels`` bound (the model itself when there are none)."""
    return model if labels is None else ConditionedModel(model, {"class_labels": labels})


class Guided:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): eps~ = (1 + w) eps(x_t, y) - w eps(x_t),
    both branches in one batched call, on the mean channels whatever the parameterization predicts
    (why that is right, and ``w`` against diffusers' ``guidance_scale``: docs/conditioning.md).
    Learned variance channels are the conditional branch's (as GLIDE)."""

    def __init__(self, model: Model, labels: torch.Tensor, scale: float) -> None:
        self.model, self.labels, self.scale = model, labels, scale

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        y = repeat_to(self.labels.to(x.device), x.shape[0])
        no_label = torch.full_like(y, NULL_LABEL)
        both = self.model(torch.cat([x, x]), torch.cat([t, t]), class_labels=torch.cat([y, no_label]))
        cond, uncond = both.chunk(2)
        c, w = x.shape[1], self.scale
        mean = (1 + w) * cond[:, :c] - w * uncond[:, :c]
        return torch.cat([mean, cond[:, c:]], dim=1)


def guided(model: Model, labels: torch.Tensor | None, scale: float = 0.0) -> Model:
    """The model that samples ``labels`` with guidance scale ``scale`` (plain ``bind`` at 0)."""
    if labels is None or scale == 0:
        return bind(model, labels)
    return Guided(model, labels, scale)


def drop_labels(labels: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Each label replaced by ``NULL_LABEL`` with ``probability`` (classifier-free guidance training)."""
    if probability == 0:
        return labels
    dropped = torch.rand(labels.shape, generator=generator) < probability
    return torch.where(dropped, torch.full_like(labels, NULL_LABEL), labels)


def class_rows(num_images: int, classes: list[int]) -> torch.Tensor:
    """The label of each of ``num_images`` samples: ``classes`` in equal consecutive blocks (image i
    gets ``classes[i * len(classes) // num_images]``), so a grid with ``num_images // len(classes)``
    columns has one row per class."""
    index = torch.arange(num_images) * len(classes) // num_images
    return torch.tensor(classes, dtype=torch.long)[index]
