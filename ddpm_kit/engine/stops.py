"""How training stops before its last step: Ctrl-C or SIGTERM (what SLURM and Kubernetes send
before they kill a job: after the current step, with a checkpoint, and an exit status a job script
can requeue on) and a non-finite gradient (before it reaches the weights)."""

from __future__ import annotations

import signal
import threading

from ..errors import DdpmKitError
from ..runs import RunFolder


SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """Turn the first Ctrl-C (SIGINT) or SIGTERM into a request to stop after the current step
    (``signum`` says which); a second one acts at once (SIGINT interrupts, SIGTERM terminates)."""

    signum = 0  # the signal received, 0 for none

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

    def __enter__(self) -> GracefulStop:
        self._installed = threading.current_thread() is threading.main_thread()
        if self._installed:
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            for s, handler in self._previous.items():
                signal.signal(s, handler)


class NonFiniteError(DdpmKitError):
    """Training produced a NaN/inf gradient; the last good checkpoint is kept."""

    def __init__(self, step: int, run: RunFolder) -> None:
        last = run.latest_checkpoint(report=lambda _: None)
        kept = f"the last good checkpoint is {last.path} (step {last.step})" if last else "no checkpoint was written yet"
        super().__init__(f"non-finite loss or gradient at step {step}; stopped before applying it, {kept}. "
                         "Lower train.lr, or set "
                         "train.on_nonfinite = \"skip\" to skip such steps; resume with --resume latest")


class Interrupted(DdpmKitError):
    """Ctrl-C or SIGTERM: a checkpoint of the last finished step was written. The exit status is
    the shell's for that signal (130 for SIGINT, 143 for SIGTERM), so a job script can requeue."""

    def __init__(self, step: int, run: RunFolder, signum: int = signal.SIGINT) -> None:
        self.exit_code = 128 + signum
        what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        super().__init__(f"{what} after step {step}; checkpoint saved, continue with "
                         f"`ddpm-kit run {run.recipe_file} --run-dir {run.path} --resume latest` "
                         f"(exit status {self.exit_code})")
