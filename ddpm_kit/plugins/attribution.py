"""Attributing failures to plugin code: an exception a plugin raises becomes one line that names
the component, the plugin and its distribution."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..errors import DdpmKitError, PluginError

if TYPE_CHECKING:
    from .registry import Provider


def one_line(exc: BaseException) -> str:
    """``TypeName: message`` on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def plugin_code(provider: Provider | tuple[Provider, ...], what: str,
                error: type[DdpmKitError] = PluginError) -> Iterator[None]:
    """Run a plugin's code: an exception it raises (other than a ``DdpmKitError``, which is already
    a message for the user) becomes one ``PluginError`` line naming the component, the plugin and
    its distribution, e.g. ``sampler 'heun2' (plugin 'mine', ddpm-kit-mine 0.1) failed while
    sampling: RuntimeError: ...``; the original stays the cause (``--debug`` prints it). Code that
    runs several plugins together (a training step: objective and backbone) names them all."""
    try:
        yield
    except DdpmKitError:
        raise
    except Exception as exc:  # plugin code: name the plugin and its distribution
        who = " or ".join(p.label for p in (provider if isinstance(provider, tuple) else (provider,)))
        raise error(f"{who} {what}: {one_line(exc)}") from exc


