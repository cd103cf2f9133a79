"""The ``run -m`` command lines that the search-then-seeds pipelines run, built in one place.

``tune`` (an Optuna search per method, then its seeds) and ``protocol`` (the benchmark's lr
grid, selection on dev, then its seeds) both launch sweeps of the Hydra app. They run them
through the Python that runs them (``python -m peftbench run``), from the caller's folder, so
an installed package and a source checkout behave alike and relative paths mean the same.

A list of sweeps runs in order (:func:`call_all`), or in *lanes*: that many copies of the
whole list at once, each running one run at a time. A lane skips a run that another lane
holds (its run-id lock, ``peftbench.records.store.claim_run``) or has finished, so the lanes
share the runs between them. One sweep after another with a parallel launcher leaves cores
idle at each sweep's tail (its last run alone, while the next sweep waits); lanes keep every
core busy up to the list's last run.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from peftbench.launch import exit_codes
from peftbench.launch.slots import LANES_ENV
from peftbench.runner import pinned_source


def sweep(overrides: Sequence[str], python: str | None = None) -> list[str]:
    """The argv of a ``-m`` sweep with these overrides (``python`` defaults to this one)."""
    return [python or sys.executable, "-m", "peftbench", "run", "-m", *overrides]


def shown(overrides: Sequence[str]) -> str:
    """The same sweep as a user would type it (selection.md, dry runs, logs)."""
    return shlex.join(["peftbench", "run", "-m", *overrides])


def call(
    overrides: Sequence[str], *, tag: str, dry_run: bool = False, env: dict | None = None
) -> int:
    """Prints the sweep under ``[tag]``, then runs it unless ``dry_run``; its exit code."""
    print(f"[{tag}] {'' if dry_run else 'running: '}{shown(overrides)}", flush=True)
    if dry_run:
        return 0
    pinned_source.pin()  # once per pipeline: its later sweeps run this source, or none (exit 3)
    return subprocess.run(sweep(overrides), env=env).returncode


def call_all(
    sweeps: Sequence[Sequence[str]], *, tag: str, lanes: int = 1, dry_run: bool = False
) -> int:
    """Runs the sweeps in order, in ``lanes`` copies at once (module docstring).

    Returns:
        0; 1 when a run failed (recorded; the other runs still ran); or the first exit code
        that stops a pipeline (bad input, a drain, a signal: the lane starts no more sweeps).
    """
    if lanes <= 1 or dry_run:
        return _in_order(sweeps, tag=tag, dry_run=dry_run)
    # torch threads: train.threads=auto gives each lane its share of the cores (slots.py)
    pinned_source.pin()  # before the lanes' environment is copied: they compare with it
    env = {**os.environ, LANES_ENV: str(lanes)}
    # each lane's job folders apart: lanes started in the same second share a sweep folder
    subdir = "hydra.sweep.subdir=lane{}-${{hydra.job.num}}-${{method.name}}"

    def lane(index: int) -> int:
        mine = [[*s, subdir.format(index + 1)] for s in sweeps]
        return _in_order(mine, tag=f"{tag} lane {index + 1}", env=env)

    with ThreadPoolExecutor(lanes) as pool:
        codes = list(pool.map(lane, range(lanes)))
    stops = [code for code in codes if not exit_codes.carry_on(code)]
    return stops[0] if stops else max(codes)


def _in_order(
    sweeps: Sequence[Sequence[str]], *, tag: str, dry_run: bool = False, env: dict | None = None
) -> int:
    failed = 0  # a diverged run is a recorded outcome: the next sweeps still run
    for overrides in sweeps:
        code = call(overrides, tag=tag, dry_run=dry_run, env=env)
        if not exit_codes.carry_on(code):
            return code
        failed = failed or code
    return failed
