"""Experiment trackers. The record is the truth; a tracker mirrors it (config + summary).

``tracker=wandb`` (default, offline unless ``tracker.mode=online``) or ``tracker=none``.
A tracker that fails never fails the run: the record is written either way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

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


class WandbTracker:
    """One wandb run per peftbench run: grouped by sweep, ``job_type`` = method."""

    def __init__(
        self, cfg: Any, *, run_id: str, config: dict, experiment: dict, results_dir: Path
    ) -> None:
        import wandb

        self._wandb = wandb
        wandb_dir = Path(cfg.get("dir") or results_dir)
        wandb_dir.mkdir(parents=True, exist_ok=True)
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
            settings=wandb.Settings(
                console="off",
                x_disable_stats=not cfg.system_stats,
                # wandb's metadata copies sys.argv verbatim (a token typed on the command line
                # would be stored); the record's config and code sections hold it redacted
                x_disable_meta=True,
                silent=True,
            ),
        )

    def log(self, row: dict) -> None:
        self.run.log({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))

    def finish(self, record: dict) -> None:
        summary = flatten({k: v for k, v in record.items() if k not in ("history", "config")})
        self.run.summary.update(summary)
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
