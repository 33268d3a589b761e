"""Processes working as one: the accelerate state, the launcher, and work that has an order cut
into the same batches whatever the number of processes, each taking a contiguous run of them, the
results gathered in order on every process (docs/training.md, "Many processes, GPUs and clusters")."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")


def has_accelerator() -> bool:
    """A GPU (or other accelerator) that accelerate would pick over the CPU."""
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def process_state():
    """The shared accelerate state. Several processes on a machine without a GPU form one gloo
    group (``cpu=True``); without it each would run alone (``DistributedType.NO``). accelerate's
    ``ACCELERATE_USE_CPU`` (what ``accelerate launch --cpu`` sets) keeps a GPU machine on its CPU."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    launched = int(os.environ.get("WORLD_SIZE", "1"))  # the processes torchrun or accelerate started
    return PartialState(cpu=launched > 1 and not has_accelerator() or parse_flag_from_env("ACCELERATE_USE_CPU"))


def launcher() -> str:
    """What started this process: accelerate launch, torchrun, SLURM, or nothing."""
    env = os.environ
    if any(k.startswith("ACCELERATE_") for k in env) and "LOCAL_RANK" in env:
        return "accelerate launch"
    if "TORCHELASTIC_RUN_ID" in env:
        return "torchrun"
    if "SLURM_PROCID" in env and "LOCAL_RANK" in env:
        return "slurm"
    return "none"


def describe(state) -> dict[str, Any]:
    """The figures a run folder's summary.json records about its processes."""
    return {"num_processes": state.num_processes, "launcher": launcher(),
            "distributed_type": str(state.distributed_type).split(".")[-1], "device": str(state.device)}


def my_batches(state, total: int, batch_size: int) -> list[range]:
    """This process's contiguous share of the index ranges of ``batch_size`` (the last one shorter)
    covering 0..total-1."""
    batches = [range(start, min(start + batch_size, total)) for start in range(0, total, batch_size)]
    with state.split_between_processes(batches) as mine:
        return list(mine)


def gather_in_order(state, parts: list[tuple[int, T]]) -> list[T]:
    """(first index, part) pairs from every process -> all parts, ordered by index, on every process."""
    from accelerate.utils import gather_object

    gathered = gather_object(parts) if state.num_processes > 1 else parts
    return [part for _, part in sorted(gathered, key=lambda item: item[0])]


def map_batches(state, total: int, batch_size: int, work: Callable[[range], np.ndarray],
                progress: Callable[[Iterator[range]], Iterator[range]] = iter) -> np.ndarray:
    """``work`` over this process's batches of 0..total-1, concatenated in index order on every process."""
    mine = my_batches(state, total, batch_size)
    parts = [(rows.start, work(rows)) for rows in progress(mine)]
    return np.concatenate(gather_in_order(state, parts))


class LocalState:
    """This process alone, with PartialState's interface: for work only the main process does."""

    num_processes, process_index, is_main_process = 1, 0, True

    @contextmanager
    def split_between_processes(self, inputs):
        yield inputs

    @contextmanager
    def main_process_first(self):
        yield

    def wait_for_everyone(self) -> None:
        pass
