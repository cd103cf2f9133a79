"""The exit code of a ``run.py`` / ``peftbench run`` command, from what its runs did.

A run that fails is recorded and the sweep goes on (its record says why), but the command
must still say that something failed: a script, a scheduler or CI reads the exit code, not
the log. The codes (docs/ERRORS.md, "Exit codes"):

- 0: every run succeeded, or was skipped (already done, or under way in another process);
- 1: at least one run failed, ran out of memory, diverged, or finished but its record could
  not be written under ``<results>/records`` (it was kept in a fallback folder);
- 2: bad input (config, data file, asset), said in one line before anything ran;
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
from pathlib import Path

EXIT_OK = 0
EXIT_RUNS_FAILED = 1
#: Statuses that do not fail the command (a skipped run was done, or is under way elsewhere).
NOT_FAILED = ("success", "skipped")
ENV = "PEFTBENCH_FAILED_RUNS_FILE"


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
    """The command's exit code from the runs noted; a sweep with failures says so in one line.

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
    if not lines:
        return EXIT_OK
    if sweep:
        shown = ", ".join(line.replace(" ", " (", 1) + ")" for line in lines[:5])
        more = f" and {len(lines) - 5} more" if len(lines) > 5 else ""
        print(
            f"peftbench: {len(lines)} run(s) of the sweep did not succeed: {shown}{more}; "
            "their records say why (peftbench report lists them in failures.md)",
            file=sys.stderr,
            flush=True,
        )
    return EXIT_RUNS_FAILED


def carry_on(code: int) -> bool:
    """Whether a pipeline (tune, benchmark) goes on after a sweep that exited with ``code``:
    yes when runs only failed (recorded, e.g. a diverged lr), no on bad input or a stop."""
    return code in (EXIT_OK, EXIT_RUNS_FAILED)
