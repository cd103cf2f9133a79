"""The ``run -m`` command lines that the search-then-seeds pipelines run, built in one place.

``tune`` (an Optuna search per method, then its seeds) and ``protocol`` (the benchmark's lr
grid, selection on dev, then its seeds) both launch sweeps of the Hydra app. They run them
through the Python that runs them (``python -m peftbench run``), from the caller's folder, so
an installed package and a source checkout behave alike and relative paths mean the same.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Sequence


def sweep(overrides: Sequence[str], python: str | None = None) -> list[str]:
    """The argv of a ``-m`` sweep with these overrides (``python`` defaults to this one)."""
    return [python or sys.executable, "-m", "peftbench", "run", "-m", *overrides]


def shown(overrides: Sequence[str]) -> str:
    """The same sweep as a user would type it (selection.md, dry runs, logs)."""
    return shlex.join(["peftbench", "run", "-m", *overrides])


def call(overrides: Sequence[str], *, tag: str, dry_run: bool = False) -> int:
    """Prints the sweep under ``[tag]``, then runs it unless ``dry_run``; its exit code."""
    print(f"[{tag}] {'' if dry_run else 'running: '}{shown(overrides)}", flush=True)
    return 0 if dry_run else subprocess.run(sweep(overrides)).returncode
