"""How training stops before its last step: Ctrl-C (after the current step, with a checkpoint) and
a non-finite gradient (before it reaches the weights)."""

from __future__ import annotations

import signal
import threading

from ..errors import DdpmKitError
from ..runs import RunFolder


class GracefulStop:
    """Turn the first Ctrl-C (SIGINT) into a request to stop after the current step; a second one
    interrupts at once."""

    requested = False

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> GracefulStop:
        self._installed = threading.current_thread() is threading.main_thread()
        if self._installed:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


class NonFiniteError(DdpmKitError):
    """Training produced a NaN/inf gradient; the last good checkpoint is kept."""

    def __init__(self, step: int, run: RunFolder) -> None:
        last = run.latest_checkpoint(report=lambda _: None)
        kept = f"the last good checkpoint is {last.path} (step {last.step})" if last else "no checkpoint was written yet"
        super().__init__(f"non-finite loss or gradient at step {step}; stopped before applying it, {kept}. "
                         "Lower train.lr, or set "
                         "train.on_nonfinite = \"skip\" to skip such steps; resume with --resume latest")


class Interrupted(DdpmKitError):
    """Ctrl-C: a checkpoint of the last finished step was written."""

    exit_code = 130

    def __init__(self, step: int, run: RunFolder) -> None:
        super().__init__(f"interrupted after step {step}; checkpoint saved, continue with "
                         f"`ddpm-kit run {run.recipe_file} --run-dir {run.path} --resume latest`")
