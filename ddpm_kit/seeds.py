"""Every seed ddpm-kit derives, in one place: from the run's seed and where a draw happens.

Nothing random in training, sampling or evaluation comes from a process's global RNG or from the
order batches run in; each draw has its own generator, seeded by what identifies it:

- a training (micro-)step's global batch (row indices, flips, label dropout, timesteps, noise):
  (run seed, step, micro-step) -> ``step_seed``;
- a dropout mask of that micro-step: (its step seed, the dropout call) -> ``dropout_seed``;
- an image of sampling or bits/dim (x_T and every step's noise): (seed, image index) -> ``image_seed``;
- the samples evaluation draws for itself: ``evaluation_sample_seed(run seed)``.

What that buys (P processes train like one, a resumed run like an uninterrupted one): docs/training.md.
Changing any formula here changes every run's numbers (and a run resumed across the change would not
continue the batches it started with).
"""

from __future__ import annotations

import torch

STEP_STRIDE = 1_000_003  # steps (or images) per unit of the run seed: distinct (seed, step) pairs
MICRO_STEPS = 64  # micro-steps per step that get distinct seeds (train.grad_accum <= 64)
DROPOUT_CALLS = 4096  # dropout calls per micro-step that get distinct masks


def step_seed(seed: int, step: int, micro: int = 0) -> int:
    """The seed of one training micro-step's global batch."""
    return (seed * STEP_STRIDE + step) * MICRO_STEPS + micro


def step_generator(seed: int, step: int, micro: int = 0) -> torch.Generator:
    """The generator of one (micro-)step's global batch: indices, flips, labels, timesteps and noise."""
    return torch.Generator().manual_seed(step_seed(seed, step, micro))


def dropout_seed(micro_step_seed: int, call: int) -> int:
    """The seed of the ``call``-th dropout mask (1, 2, ...) drawn in the micro-step ``micro_step_seed``."""
    return micro_step_seed * DROPOUT_CALLS + call


def image_seed(seed: int, index: int) -> int:
    """The generator seed of image ``index`` under ``seed`` (distinct for every pair)."""
    return (seed * STEP_STRIDE + index) % (2**63 - 1)


def evaluation_sample_seed(run_seed: int) -> int:
    """The seed of the samples a metric draws (``EvalContext.samples``): apart from the run's
    ``sample.seed`` default (0), so that evaluation does not score the very images of the final grid."""
    return run_seed + 1
