"""Progress bars: tqdm on the process that shows them, off elsewhere; ``TQDM_DISABLE=1`` turns
them all off (tqdm reads its ``TQDM_*`` settings from the environment unless a call overrides them,
so an enabled bar passes no ``disable``)."""

from __future__ import annotations

from typing import Any


def progress_bar(iterable: Any = None, *, enabled: bool = True, **kwargs: Any):
    """``tqdm(iterable, **kwargs)``, disabled when ``enabled`` is false (e.g. not the main process)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, dynamic_ncols=True, **kwargs, **({} if enabled else {"disable": True}))
