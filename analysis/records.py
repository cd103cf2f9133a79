"""Run records (one JSON file per run) -> one flat pandas row per record.

Records are the source of truth; everything in ``analysis`` is a view built from them.
Nothing here edits a record.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from peftbench.record import SCHEMA_VERSION

#: Versions this reader understands: 1 (run ids without the recipe hash) reads as it was.
READABLE_SCHEMAS = (1, SCHEMA_VERSION)
SUCCESS = "success"
SYNTHETIC = "synthetic"

# Column order of the frame returned by load_records (also used for an empty frame).
COLUMNS = [
    "run_id", "status", "error", "created_at",
    "task", "task_version", "model", "method", "method_label", "seed", "sweep_id", "weights",
    "budget_pct",
    "primary_name", "primary_split", "primary_value", "higher_is_better",
    "total_params", "trainable", "trainable_pct", "artifact_bytes",
    "peak_alloc_bytes", "peak_rss_bytes", "peak_mem_bytes",
    "train_time_s", "eval_time_s", "tokens_per_s", "samples_per_s",
    "git_sha", "git_dirty", "device", "path",
]  # fmt: skip


class RecordWarning(UserWarning):
    """A file in the results directory was skipped because it is not a valid record."""


def load_records(results_dir: str | Path) -> pd.DataFrame:
    """Loads every ``*.json`` record under ``results_dir`` (recursively) into a flat frame.

    Files that cannot be read, are not JSON, or are not version-1 records are skipped with a
    :class:`RecordWarning`, so one bad file never hides all the others.

    Args:
        results_dir: Directory holding run records, possibly in sub-folders.

    Returns:
        One row per valid record with the columns in :data:`COLUMNS`; ``created_at`` is a
        UTC timestamp (NaT when missing). ``peak_mem_bytes`` is the accelerator's allocated
        peak when recorded, else the process RSS peak.
    """
    rows = []
    for path in sorted(Path(results_dir).rglob("*.json")):
        record, reason = _read(path)
        if reason:
            warnings.warn(f"skipping {path}: {reason}", RecordWarning, stacklevel=2)
            continue
        rows.append(_flatten(record, path))
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["created_at"] = pd.to_datetime(df["created_at"], utc=True, format="ISO8601", errors="coerce")
    return df


def _read(path: Path) -> tuple[dict[str, Any], str | None]:
    """Returns (record, None) or ({}, why the file is not a usable record)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return {}, f"unreadable JSON ({err})"
    if not isinstance(record, dict):
        return {}, "not a JSON object"
    if record.get("schema_version") not in READABLE_SCHEMAS:
        # A newer schema may change meanings; guessing would quietly mix incomparable runs.
        readable = ", ".join(map(str, READABLE_SCHEMAS))
        return {}, f"schema_version {record.get('schema_version')!r} not in {readable}"
    experiment = record.get("experiment")
    if not isinstance(experiment, dict):
        return {}, "no 'experiment' object"
    missing = [k for k in ("task", "model", "method") if not experiment.get(k)]
    missing += [k for k in ("run_id", "status") if not record.get(k)]
    if missing:
        return {}, f"missing {', '.join(missing)}"
    if record["status"] == SUCCESS and not _is_number(_get(record, "metrics", "primary", "value")):
        return {}, "success record without a finite metrics.primary.value"
    return record, None


def _is_number(value: Any) -> bool:
    is_real = isinstance(value, int | float) and not isinstance(value, bool)
    return is_real and math.isfinite(value)


def _get(record: dict[str, Any], *keys: str) -> Any:
    """Nested lookup that returns None when any level is missing or null."""
    node: Any = record
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _flatten(record: dict[str, Any], path: Path) -> dict[str, Any]:
    exp = record["experiment"]
    alloc = _get(record, "cost", "peak_mem_bytes", "allocated")
    rss = _get(record, "cost", "peak_mem_bytes", "rss")
    return {
        "run_id": record["run_id"],
        "status": record["status"],
        "error": record.get("error"),
        "created_at": record.get("created_at"),
        "task": exp["task"],
        "task_version": exp.get("task_version"),
        "model": exp["model"],
        "method": exp["method"],
        "method_label": method_label(exp["method"], exp.get("budget_pct")),
        "seed": exp.get("seed"),
        "sweep_id": exp.get("sweep_id"),
        "weights": exp.get("weights"),
        "budget_pct": exp.get("budget_pct"),
        "primary_name": _get(record, "metrics", "primary", "name"),
        "primary_split": _get(record, "metrics", "primary", "split"),
        "primary_value": _get(record, "metrics", "primary", "value"),
        "higher_is_better": _get(record, "metrics", "primary", "higher_is_better"),
        "total_params": _get(record, "params", "total"),
        "trainable": _get(record, "params", "trainable"),
        "trainable_pct": _get(record, "params", "trainable_pct"),
        "artifact_bytes": _get(record, "params", "artifact_bytes"),
        "peak_alloc_bytes": alloc,
        "peak_rss_bytes": rss,
        "peak_mem_bytes": alloc if alloc is not None else rss,
        "train_time_s": _get(record, "cost", "train_time_s"),
        "eval_time_s": _get(record, "cost", "eval_time_s"),
        "tokens_per_s": _get(record, "cost", "tokens_per_s"),
        "samples_per_s": _get(record, "cost", "samples_per_s"),
        "git_sha": _get(record, "code", "git_sha"),
        "git_dirty": _get(record, "code", "git_dirty"),
        "device": _get(record, "env", "device"),
        "path": str(path),
    }


def method_label(method: str, budget_pct: float | None) -> str:
    """Row label of a method: runs at different parameter budgets must not be averaged.

    Args:
        method: Method name from the record.
        budget_pct: Trainable-parameter budget in percent, or None when the run had none.

    Returns:
        ``"lora"`` without a budget, ``"lora@0.5%"`` with one.
    """
    if budget_pct is None or (isinstance(budget_pct, float) and math.isnan(budget_pct)):
        return method
    return f"{method}@{budget_pct:g}%"


def select(
    df: pd.DataFrame,
    *,
    task: str | Iterable[str] | None = None,
    model: str | Iterable[str] | None = None,
    method: str | Iterable[str] | None = None,
    sweep: str | Iterable[str] | None = None,
) -> pd.DataFrame:
    """Keeps the rows matching every given filter; None means no filter on that column.

    Args:
        df: Frame from :func:`load_records`.
        task: Task name or names.
        model: Model name or names.
        method: Method name or names (the name in the record, without budget suffix).
        sweep: Sweep id or ids.

    Returns:
        The matching rows (a new frame).
    """
    keep = pd.Series(True, index=df.index)
    filters = {"task": task, "model": model, "method": method, "sweep_id": sweep}
    for column, wanted in filters.items():
        if wanted is not None:
            values = [wanted] if isinstance(wanted, str) else list(wanted)
            keep &= df[column].isin(values)
    return df[keep].copy()


def latest_success(df: pd.DataFrame) -> pd.DataFrame:
    """Keeps, per run_id and kind of weights, the most recent successful record.

    A re-run writes a new record rather than editing the old one, so older successes of the
    same run_id are superseded. Weights are part of the key so that a synthetic-weight smoke
    run never shadows the real (pretrained) result of the same run_id.

    Args:
        df: Frame from :func:`load_records`.

    Returns:
        Success rows only, one per (run_id, weights); records without ``created_at`` count
        as oldest; ties are broken by path so the result is deterministic.
    """
    ok = df[df["status"] == SUCCESS]
    ok = ok.sort_values(["created_at", "path"], na_position="first", kind="stable")
    return ok.drop_duplicates(["run_id", "weights"], keep="last").sort_index()


def exclude_synthetic(df: pd.DataFrame) -> pd.DataFrame:
    """Drops runs on synthetic (random) weights: they measure cost, never quality."""
    return df[df["weights"] != SYNTHETIC].copy()


def quality_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The runs that quality tables and plots may use: latest success, real weights only.

    Args:
        df: Frame from :func:`load_records`, possibly filtered with :func:`select`.

    Returns:
        One row per run_id.
    """
    return latest_success(exclude_synthetic(df))
