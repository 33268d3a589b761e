"""How training stops before its last step: Ctrl-C or SIGTERM (what SLURM and Kubernetes send
before they kill a job: after the current step, with a checkpoint, and an exit status a job script
can requeue on) and a non-finite gradient (before it reaches the weights)."""

from __future__ import annotations

import signal
import threading
import time

from ..errors import DdpmKitError
from ..runs import RunFolder

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """Turn Ctrl-C (SIGINT) or SIGTERM into a request to stop after the current step (``signum``
    says which). A repeated SIGTERM is the same request: under SLURM every process of a job step
    gets the scheduler's SIGTERM and then the launcher's forwarded one, and acting on the second
    would kill the process before its checkpoint. A Ctrl-C more than ``patience`` seconds after the
    first signal interrupts at once (a person who means it)."""

    signum = 0  # the signal received, 0 for none
    patience = 2.0

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if signum == signal.SIGINT and self.signum and now - self._since > self.patience:
            raise KeyboardInterrupt
        if not self.signum:
            self.signum, self._since = signum, now

    def __enter__(self) -> GracefulStop:
        self._installed = threading.current_thread() is threading.main_thread()
        if self._installed:
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            for s, handler in self._previous.items():
                signal.signal(s, handler)


class StopAgreement:
    """Several processes agree to stop after the same step without waiting on each other: after
    step n each starts an all-reduce (max) of its stop request and goes on with step n + 1; after
    step n + 1 it reads the result, so every process stops after step n + 1 when any one was asked
    to by step n, whatever ``train.log_every`` is. One process needs no agreement."""

    def __init__(self, accelerator) -> None:
        self.accelerator = accelerator
        self.pending: tuple | None = None

    def __call__(self, signum: int) -> int:
        """The signal every process stops on after this step (0: go on), given this process's own."""
        if self.accelerator.num_processes == 1:
            return signum
        import torch
        import torch.distributed as dist

        agreed = 0
        if self.pending is not None:
            work, flag = self.pending
            work.wait()
            agreed = int(flag.item())
        flag = torch.tensor([float(signum)], device=self.accelerator.device)
        self.pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, async_op=True), flag)
        return agreed

    def settle(self) -> None:
        """Wait for the last all-reduce (every process started it), so none is left in flight."""
        if self.pending is not None:
            self.pending[0].wait()
            self.pending = None


class NonFiniteError(DdpmKitError):
    """Training produced a NaN/inf gradient; the last good checkpoint is kept."""

    def __init__(self, step: int, run: RunFolder) -> None:
        last = run.latest_checkpoint(report=lambda _: None)
        kept = (f"the last good checkpoint is {last.path} (step {last.step})" if last
                else "no checkpoint was written yet")
        super().__init__(f"non-finite loss or gradient at step {step}; stopped before applying it, {kept}. "
                         "Lower train.lr, or set train.on_nonfinite = \"skip\" to skip such steps; resume with "
                         "--resume latest")


class Interrupted(DdpmKitError):
    """Ctrl-C or SIGTERM: a checkpoint of the last finished step was written. The exit status is
    the shell's for that signal (130 for SIGINT, 143 for SIGTERM), so a job script can requeue."""

    def __init__(self, step: int, run: RunFolder, signum: int = signal.SIGINT) -> None:
        self.exit_code = 128 + signum
        what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        super().__init__(f"{what} after step {step}; checkpoint saved, continue with `{run.resume_command}` "
                         f"(exit status {self.exit_code})")
