"""User-facing errors: one line that names the file, the key and what would be valid."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class DdpmKitError(Exception):
    """An error caused by the user's input. The CLI prints it as one line and exits 2."""

    exit_code = 2


class PluginError(DdpmKitError):
    """A plugin's own code failed (not the user's input): one line naming the plugin, its
    distribution and the component; exit 1; ``--debug`` shows the plugin's traceback."""

    exit_code = 1


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?) valid: a, b, c' -- a close-match suggestion plus the full list."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"{hint}; valid: {', '.join(choices) if choices else '(none)'}"


def one_line(exc: BaseException) -> str:
    """``TypeName: message`` on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def prefixed(prefix: str) -> Iterator[None]:
    """A ``DdpmKitError`` raised inside, again as one line that starts with ``prefix`` (a file and key, say)."""
    try:
        yield
    except DdpmKitError as exc:
        raise DdpmKitError(f"{prefix}: {exc}") from None
