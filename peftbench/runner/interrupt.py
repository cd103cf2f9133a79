"""Stopping a run on a signal: a record that says so, and a checkpoint to resume from.

Schedulers end a job with SIGTERM (SLURM, Kubernetes, ``kill``), a user with Ctrl-C
(SIGINT) or by closing the terminal or ssh session the run was started from (SIGHUP); SLURM
warns before its time limit with the signal a job asks for: SIGUSR2 under the ``slurm``
launcher preset (submitit's ``--signal=USR2@120``), SIGUSR1 for a hand-written ``#SBATCH
--signal=B:USR1@120``. While a training step (with its logging, evaluation and checkpoint)
is under way the stop waits for the step to end, so
the checkpoint written on the way out is a consistent state; anywhere else (loading, the test
pass) the run stops at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

#: SIGHUP: the terminal or ssh session a run was started from closed (without nohup/tmux),
#: which otherwise kills it silently: no record, no checkpoint (exit 129).
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


class Interrupted(BaseException):  # noqa: N818 (not an error of the run: a request to stop)
    """A stop signal arrived. A BaseException, so no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.step: int | None = None  # set by the training loop: the last step completed
        super().__init__(signal.Signals(signum).name)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention for a process ended by a signal


class _Stop:
    """The pending stop request of this process, and whether it must wait for a step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.deferring = False

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = signum
        if not self.deferring:
            raise Interrupted(signum)

    def check(self) -> None:
        """Raises :class:`Interrupted` if a stop signal arrived while deferring."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def release(self) -> None:
        """Back to stopping at once (a pending signal is acted on by the next check)."""
        self.deferring = False


_stop = _Stop()


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, the :data:`SIGNALS` raise :class:`Interrupted`.

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _stop.handle) for s in SIGNALS}
    _stop.signum, _stop.deferring = None, False
    try:
        yield
        _stop.check()  # a signal that arrived while deferring and was not acted on yet
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def defer_stop() -> _Stop:
    """From now on a stop signal only marks the stop; ``check()`` raises it, ``release()``
    ends the deferral. The training loop checks between steps."""
    _stop.deferring = True
    return _stop
