"""The cache: where ddpm-kit keeps what it can rebuild (prepared splits in ``<cache>/data-store``,
feature classifiers and real-data statistics in ``<cache>/feature-nets``), how an entry is named
(``content_hash``) and written (``atomic_file``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """The folder that holds every cache: ``$DDPM_KIT_CACHE``, else ``$XDG_CACHE_HOME/ddpm-kit``, else
    ``~/.cache/ddpm-kit``."""
    if configured := os.environ.get("DDPM_KIT_CACHE"):
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ddpm-kit"


def content_hash(key: Any, length: int = 16) -> str:
    """A short, stable name for what ``key`` (JSON-able; other values by ``str``) describes: the
    SHA-256 of its JSON with sorted keys."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:length]


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed to ``path`` when the block succeeds,
    removed when it fails. The temporary name keeps ``path``'s suffix (numpy and safetensors
    writers look at it) and the process id (processes of a run may race to write one entry)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
