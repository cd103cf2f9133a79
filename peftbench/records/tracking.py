"""Experiment trackers. The record is the truth; a tracker mirrors it (config + summary).

``tracker=wandb`` (default, offline unless ``tracker.mode=online``) or ``tracker=none``.
A tracker that fails never fails the run: the record is written either way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from peftbench.records.redact import scrub

log = logging.getLogger(__name__)


def flatten(tree: dict, prefix: str = "", sep: str = "/") -> dict:
    """{"a": {"b": 1}} -> {"a/b": 1}; lists are kept as values."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, name, sep))
        else:
            flat[name] = value
    return flat


class NullTracker:
    """``tracker=none``: tracks nothing."""

    def log(self, row: dict) -> None:
        pass

    def finish(self, record: dict) -> None:
        pass


def _settings(wandb: Any, cfg: Any) -> Any:
    return wandb.Settings(
        console="off",
        x_disable_stats=not cfg.get("system_stats", False),
        # wandb's metadata copies sys.argv verbatim (a token typed on the command line
        # would be stored); the record's config and code sections hold it redacted
        x_disable_meta=True,
        silent=True,
    )


class WandbTracker:
    """One wandb run per peftbench run: grouped by sweep, ``job_type`` = method."""

    def __init__(
        self, cfg: Any, *, run_id: str, config: dict, experiment: dict, results_dir: Path
    ) -> None:
        import wandb

        self._wandb = wandb
        wandb_dir = Path(cfg.get("dir") or results_dir)
        wandb_dir.mkdir(parents=True, exist_ok=True)
        # Everything wandb is handed goes through the record's scrubbing: its run file is
        # as much an output as the record (a token in a data path reached it verbatim).
        run_id, config, experiment = scrub(run_id), scrub(config), scrub(experiment)
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.get("entity"),
            mode=cfg.mode,
            dir=str(wandb_dir),
            name=run_id,
            group=str(experiment["sweep_id"]),
            job_type=experiment["method"],
            tags=[f"task:{experiment['task']}", f"model:{experiment['model']}"],
            config=config,
            reinit="finish_previous",  # Hydra's basic launcher runs every job in one process
            settings=_settings(wandb, cfg),
        )

    def log(self, row: dict) -> None:
        clean = scrub({k: v for k, v in row.items() if k != "step"})
        self.run.log(clean, step=int(row["step"]))

    def finish(self, record: dict) -> None:
        summary = flatten({k: v for k, v in record.items() if k not in ("history", "config")})
        self.run.summary.update(scrub(summary))
        self.run.finish(exit_code=0 if record["status"] == "success" else 1)


def make_tracker(cfg: Any, **kwargs: Any) -> NullTracker | WandbTracker:
    """Builds the configured tracker; falls back to none (with a warning) if it cannot start."""
    if cfg.name == "none":
        return NullTracker()
    try:
        return WandbTracker(cfg, **kwargs)
    except Exception as error:  # tracking is a view; the record must still be written
        log.warning("wandb could not start (%s); continuing without tracking", error)
        return NullTracker()


#: The wandb ``job_type`` of a sweep's comparison run (the runs themselves are by method).
REPORT_JOB_TYPE = "report"
#: The key of the comparison table in the report run (its plots go under ``plots/<stem>``).
REPORT_TABLE_KEY = "comparison"


def log_report(cfg: Any, *, group: str, results_dir: Path, report: list[Path]) -> str | None:
    """Logs a sweep's report to one wandb run of ``job_type=report`` in the sweep's group.

    The run holds the comparison table (``comparison.csv``, as a ``wandb.Table``) and every
    PNG plot of the report (a ``wandb.Image`` under ``plots/<stem>``), so the group's
    dashboard opens on the comparison. Mode, project and folder are the tracker's (offline
    by default); ``tracker=none`` logs nothing. Like every tracker, a failure only warns.

    Args:
        cfg: The ``tracker`` config group.
        group: The sweep id: the wandb group its runs were logged in.
        results_dir: The results folder (wandb's folder unless ``tracker.dir`` is set).
        report: The paths ``analysis.report.build_report`` wrote.

    Returns:
        The wandb run's id, or None when nothing was logged.
    """
    if cfg.name == "none":
        return None
    try:
        import pandas as pd
        import wandb

        csv = next((p for p in report if p.name == "comparison.csv"), None)
        plots = sorted(p for p in report if p.suffix == ".png")
        wandb_dir = Path(cfg.get("dir") or results_dir)
        wandb_dir.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=cfg.project,
            entity=cfg.get("entity"),
            mode=cfg.mode,
            dir=str(wandb_dir),
            name=f"report-{group}",
            group=group,
            job_type=REPORT_JOB_TYPE,
            config=scrub(
                {"sweep_id": group, "report_dir": str(report[0].parent) if report else None}
            ),
            reinit="finish_previous",
            settings=_settings(wandb, cfg),
        )
        row: dict = {f"plots/{p.stem}": wandb.Image(str(p)) for p in plots}
        if csv is not None:
            table = pd.read_csv(csv)
            row[REPORT_TABLE_KEY] = wandb.Table(dataframe=table)
        run.log(row)
        run.finish()
        return run.id
    except Exception as error:  # the report files are written; the dashboard is a view
        log.warning("wandb could not log the report (%s)", error)
        return None
