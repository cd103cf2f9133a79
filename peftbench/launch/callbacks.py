"""Hydra callbacks: a sweep progress line per job, and the report when a sweep ends.

Under the ``slurm`` launcher the jobs run elsewhere: the launcher (peftbench/launch/slurm.py)
hands each job's outcome over with :func:`note_outcomes`, and the sweep ends with the report,
a summary of every job with the command that resumes, and exit code 1 unless all succeeded.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from peftbench.launch import exit_codes

log = logging.getLogger("peftbench")

#: Job outcomes that count as done: anything else makes a slurm sweep exit with 1.
DONE = ("success", "skipped")

# Launchers run jobs in this process or in children that inherit the environment.
_TOTAL_ENV = "PEFTBENCH_SWEEP_TOTAL"

#: What the slurm launcher learnt of each job (peftbench/launch/slurm.py); empty under the
#: other launchers, whose jobs run in this process or report through ``on_job_end``.
_outcomes: list[dict] = []


def note_outcomes(outcomes: list[dict]) -> None:
    """Keeps the jobs' outcomes for the summary that ends the sweep (the launching process)."""
    _outcomes.extend(outcomes)


def sweep_total() -> str | None:
    """The sweep's job count as ``on_multirun_start`` worked it out (None outside a sweep)."""
    return os.environ.get(_TOTAL_ENV)


def resume_command(argv: list[str]) -> str:
    """The command that launched this sweep: run again, it resumes what did not finish.

    Args:
        argv: the process's original command line (``sys.orig_argv``: the app rewrites
            ``sys.argv`` for Hydra), the interpreter as it was typed first.
    """
    script = argv[1] if len(argv) > 1 else ""
    if script.endswith(".py") or not script:  # python path/to/run.py ...: as it was typed
        return shlex.join(argv)
    return shlex.join([Path(script).name, *argv[2:]])  # a console script: peftbench run ...


def summary_lines(outcomes: list[dict], total: str, command: str) -> list[str]:
    """Every job's outcome, one line each, and the command that resumes the unfinished."""
    counts = Counter(o["status"] for o in outcomes)
    lines = [f"Sweep: {len(outcomes)} jobs, " + ", ".join(f"{n} {s}" for s, n in counts.items())]
    for o in sorted(outcomes, key=lambda o: o.get("job", 0)):
        line = f"  job {o.get('job', '?')}/{total} {o['status']:<11} {o.get('run_id') or '-'}"
        if o.get("error") and o["status"] not in DONE:
            line += f"  {' '.join(str(o['error']).split())[:400]}"
        lines.append(line)
    if any(o["status"] not in DONE for o in outcomes):
        lines += [
            "Resume (finished runs are skipped, interrupted ones go on from their checkpoints):",
            f"  {command}",
        ]
    return lines


def sweep_size(overrides: list[str]) -> int | None:
    """Number of jobs a list of command-line overrides expands to (None if it can't tell).

    A key given twice counts once, the later value winning (as in Hydra's basic sweeper).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        # A plain value counts too: ``seed=0`` after a preset's ``seed: 0,1,2`` is one job.
        sizes = {
            o.get_key_element(): len(list(o.sweep_string_iterator()))
            if o.is_sweep_override()
            else 1
            for o in parsed
        }
        return math.prod(sizes.values())
    except Exception:  # e.g. glob() sweeps need the config repository to expand
        return None


class ScrubHydraFiles(Callback):
    """Keeps secrets out of Hydra's own files under results_dir.

    Hydra saves ``.hydra/{config,hydra,overrides}.yaml`` (and a sweep's ``multirun.yaml``)
    just before ``on_job_start``, verbatim: a token given on the command line would sit there
    in clear. They are rewritten redacted at once. (What Hydra and the job log goes through
    :class:`peftbench.records.redact.ScrubFilter`, set in conf/config.yaml's logging configs.)
    """

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        from peftbench.records.redact import scrub_file

        hydra = config.hydra
        folders = []
        if hydra.output_subdir is not None:
            folders.append(Path(hydra.runtime.output_dir) / hydra.output_subdir)
        if hydra.mode is not None and hydra.mode.name == "MULTIRUN":
            folders.append(Path(hydra.sweep.dir))
        for folder in folders:
            for path in folder.glob("*.yaml"):
                scrub_file(path)


class ReportAtSweepEnd(Callback):
    """Prints ``[sweep] job k/N`` as jobs end and writes the report once the sweep ends.

    After a slurm sweep it also prints every job's outcome (:func:`summary_lines`) and exits
    with 1 if any run did not succeed: a ``SystemExit`` that Hydra lets through, so the
    command's exit code says whether the sweep is complete (issue 37).

    The report also goes to wandb (``peftbench.records.tracking.log_report``): one run of
    ``job_type=report`` in the sweep's group, unless ``tracker=none``.

    ``hydra.callbacks.report.write_report=false`` keeps the progress lines and the slurm
    summary but writes no report: for sweeps whose results folder is tracked by git (the
    offline benchmark's lanes), where a report rewritten at each sweep's end would make the
    next run's record say ``git_dirty``; a later ``peftbench report`` writes it once.
    """

    def __init__(self, write_report: bool = True) -> None:
        self.write_report = write_report

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        _outcomes.clear()
        sweeper = config.hydra.sweeper
        if sweeper.get("n_trials"):  # Optuna: a fixed number of trials
            total = int(sweeper.n_trials)
        else:  # a preset's hydra.sweeper.params, then the command line (wins on a key)
            params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
            total = sweep_size(params + list(config.hydra.overrides.task))
        os.environ[_TOTAL_ENV] = str(total or "?")

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        if _TOTAL_ENV not in os.environ:  # a single run, not a sweep
            return
        summary = job_return.return_value if job_return.status.name == "COMPLETED" else None
        status = summary["status"] if isinstance(summary, dict) else "error"
        run_id = summary["run_id"] if isinstance(summary, dict) else "?"
        if isinstance(summary, float):  # an Optuna trial returns its objective
            status, run_id = "trial", f"dev objective {summary:.4f}"
        number = int(config.hydra.job.num) + 1
        log.info("[sweep] job %d/%s %s: %s", number, os.environ[_TOTAL_ENV], status, run_id)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        total = os.environ.pop(_TOTAL_ENV, None) or "?"
        if os.environ.get("RANK", "0") != "0":
            return  # a data-parallel sweep (torchrun): rank 0 writes the report
        drain = exit_codes.draining()
        if not self.write_report:
            log.info("[sweep] ended: no report (write_report=false)")
        elif drain is None:
            self._report(config)
        else:  # a chunk ends: its report would be partial, and costs minutes on a big sweep
            log.info(
                "[sweep] draining (%s exists): no report; the chunk that ends the sweep "
                "writes it, or `peftbench report --results %s` now",
                drain,
                config.results_dir,
            )
        if _outcomes:  # the slurm launcher's jobs: what became of each, and the exit code
            print("\n" + "\n".join(summary_lines(_outcomes, total, resume_command(sys.orig_argv))))
            if any(o["status"] not in DONE for o in _outcomes):
                raise SystemExit(1)

    def _report(self, config: Any) -> None:
        from analysis.report import build_report

        results_dir = Path(config.results_dir)
        try:
            paths = build_report(results_dir=results_dir)
        except ValueError as error:  # e.g. no success record yet: say so, don't crash
            log.warning("no report: %s", error)
            return
        print(f"\nReport written to {paths[0].parent}:")
        for path in paths:
            print(f"  {path}")
        if config.get("tracker") is not None:  # the sweep's wandb group opens on the comparison
            from peftbench.records.redact import scrub
            from peftbench.records.tracking import log_report

            log_report(  # the group the runs used: their sweep_id, redacted like their config
                config.tracker,
                group=scrub(str(config.sweep_id)),
                results_dir=results_dir,
                report=paths,
            )
