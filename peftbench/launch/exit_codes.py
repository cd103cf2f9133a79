"""The exit code of a ``run.py`` / ``peftbench run`` command, from what its runs did.

A run that fails is recorded and the sweep goes on (its record says why), but the command
must still say that something failed: a script, a scheduler or CI reads the exit code, not
the log. The codes (docs/ERRORS.md, "Exit codes"):

- 0: every run succeeded, or was skipped (already done, or under way in another process);
- 1: at least one run failed, ran out of memory, diverged, or finished but its record could
  not be written under ``<results>/records`` (it was kept in a fallback folder);
- 2: bad input (config, data file, asset), said in one line before anything ran;
- 3: runs were left unstarted, because the drain file existed (:func:`draining`) or the
  source changed under the command (:mod:`peftbench.runner.pinned_source`); the runs under
  way finished and recorded, and the same command goes on where it stopped;
- 128+N: stopped by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP), the run's record saying
  where and its checkpoint kept.

Launchers run a sweep's jobs in this process (Hydra's basic launcher) or in children that
inherit the environment (joblib), so each job that did not succeed appends one line to a file
named by :data:`ENV`; the command reads it when the sweep is over. Standard library only: the
command line imports it before torch.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

EXIT_OK = 0
EXIT_RUNS_FAILED = 1
EXIT_NOT_STARTED = 3
#: Statuses that do not fail the command (a skipped run was done, or is under way elsewhere).
NOT_FAILED = ("success", "skipped")
#: The status of a run left unstarted while draining: no record, nothing lost.
DEFERRED = "deferred"
#: The status of a run left unstarted as the code or configuration changed under the command.
SOURCE_MOVED = "source-moved"
#: Each kind of unstarted run: the command's last line, labelled, says why it was left.
NOT_STARTED = {
    DEFERRED: (
        "drained",
        "as the drain file {drain} exists; remove it and run the same command to go on",
    ),
    SOURCE_MOVED: (
        "source changed",
        "as peftbench's code or configuration changed since the command started (its log "
        "names the files); run the same command again to go on with the new version",
    ),
}
ENV = "PEFTBENCH_FAILED_RUNS_FILE"
#: Names a file; while it exists, runs that have not started are not started (a "drain", as a
#: scheduler drains a node): a long sweep ends at the next run boundary instead of being
#: killed mid-run. ``scripts/offline_benchmark.sh`` names ``DIR/DRAIN``.
DRAIN_ENV = "PEFTBENCH_DRAIN_FILE"


def draining() -> str | None:
    """The drain file, if the environment names one and it exists (else None)."""
    name = os.environ.get(DRAIN_ENV)
    return name if name and os.path.exists(name) else None


def start() -> Path:
    """Starts counting this command's failed runs (a fresh file, named in the environment)."""
    fd, name = tempfile.mkstemp(prefix="peftbench-failed-runs-", suffix=".txt")
    os.close(fd)
    os.environ[ENV] = name
    return Path(name)


def note(summary: object) -> None:
    """Remembers a run's outcome if it did not succeed (``experiment.run``'s summary)."""
    status = summary.get("status") if isinstance(summary, dict) else "error"
    if status in NOT_FAILED or ENV not in os.environ:
        return
    run_id = summary.get("run_id", "?") if isinstance(summary, dict) else "?"
    try:
        with open(os.environ[ENV], "a", encoding="utf-8") as f:  # one short line: atomic
            f.write(f"{run_id} {status}\n")
    except OSError:  # a job on another machine (slurm) cannot reach the file: its record can
        pass


def finish(*, sweep: bool) -> int:
    """The command's exit code from the runs noted (runs left unstarted by a drain: 3, before
    failures' 1); a sweep with failures says so in one line.

    A single run's failure was already said (its ``FAILED: ...`` line); a sweep gets one line
    that counts them, so a failure in job 3 of 40 is not lost in the scroll-back.
    """
    name = os.environ.pop(ENV, None)
    if name is None:
        return EXIT_OK
    path = Path(name)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    path.unlink(missing_ok=True)
    unstarted = Counter(line.rsplit(" ", 1)[-1] for line in lines)
    unstarted = {status: n for status, n in unstarted.items() if status in NOT_STARTED}
    lines = [line for line in lines if line.rsplit(" ", 1)[-1] not in NOT_STARTED]
    if lines and sweep:
        shown = ", ".join(line.replace(" ", " (", 1) + ")" for line in lines[:5])
        more = f" and {len(lines) - 5} more" if len(lines) > 5 else ""
        print(
            f"peftbench: {len(lines)} run(s) of the sweep did not succeed: {shown}{more}; "
            "their records say why (peftbench report lists them in failures.md)",
            file=sys.stderr,
            flush=True,
        )
    for status, count in unstarted.items():  # the pipelines stop here too (carry_on)
        label, why = NOT_STARTED[status]
        why = why.format(drain=os.environ.get(DRAIN_ENV))
        print(f"peftbench: {label}: {count} run(s) not started, {why}", file=sys.stderr, flush=True)
    if unstarted:
        return EXIT_NOT_STARTED
    return EXIT_RUNS_FAILED if lines else EXIT_OK


def carry_on(code: int) -> bool:
    """Whether a pipeline (tune, benchmark) goes on after a sweep that exited with ``code``:
    yes when runs only failed (recorded, e.g. a diverged lr), no on bad input or a stop."""
    return code in (EXIT_OK, EXIT_RUNS_FAILED)
