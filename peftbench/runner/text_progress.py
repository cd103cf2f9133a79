"""Progress lines for logs that are not a terminal.

tqdm draws nothing when stderr is a file (a benchmark lane's log, a Slurm ``.out``), so a
15-minute run there said nothing between its start and its end. This writes one log line
every tenth of the run and one per dev evaluation instead: where the run is, its loss, its
dev score and the time left at the pace so far.
"""

from __future__ import annotations

import logging
import math
import time

log = logging.getLogger("peftbench")

TENTHS = 10  # a line every tenth of the run's steps


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


class TextProgress:
    """Writes progress lines to the ``peftbench`` logger when ``enabled``.

    Args:
        label: the run's id (lines from two lanes interleave in one log).
        total: the run's optimisation steps.
        first_step: steps already done (a resumed run counts its pace from here).
        enabled: False where a progress bar is drawn instead, or on a non-main rank.
    """

    def __init__(self, label: str, total: int, first_step: int = 0, *, enabled: bool) -> None:
        self.label, self.total, self.enabled = label, max(total, 1), enabled
        self.first_step, self.started = first_step, time.perf_counter()
        self.every = max(1, math.ceil(self.total / TENTHS))
        self.next_line = (first_step // self.every + 1) * self.every

    def _where(self, step: int) -> str:
        spent = time.perf_counter() - self.started
        done_here = step - self.first_step
        where = f"{self.label}: step {step}/{self.total} ({100 * step // self.total}%)"
        if done_here <= 0 or step >= self.total:
            return f"{where}, {_duration(spent)}"
        left = spent / done_here * (self.total - step)
        return f"{where}, {_duration(spent)}, ~{_duration(left)} left"

    def step(self, step: int, loss: float) -> None:
        """After optimisation step ``step`` (1-based); writes a line at each tenth."""
        if not self.enabled or step < self.next_line:
            return
        self.next_line = (step // self.every + 1) * self.every
        log.info("%s, loss %.4f", self._where(step), loss)

    def dev(self, step: int, metric: str, value: float, best: float | None) -> None:
        """After the dev evaluation at ``step``: its primary metric and the best so far."""
        if self.enabled:
            best_text = "" if best is None else f" (best {best:.4f})"
            log.info("%s, dev %s %.4f%s", self._where(step), metric, value, best_text)
