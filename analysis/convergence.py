"""Convergence curves: dev score against optimizer steps and against wall-clock seconds.

The curves come from each record's ``history`` (rows with ``step``, ``elapsed_s`` and
``dev/<metric>``), which the flat records frame does not hold, so the records are re-read
from their paths. Seeds are averaged per evaluation step; the band spans the seeds' range.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes

from analysis.plots import method_colors, new_figure, save_figure
from analysis.tables import TaskInfo, task_infos

STEM = "convergence"
KEYS = ["task", "model", "method_label"]
# (x column, axis label) of the two rows of the figure.
X_AXES = (("step", "optimizer step"), ("elapsed_s", "seconds since training start"))


def load_histories(runs: pd.DataFrame) -> pd.DataFrame:
    """Dev-score points of every run: one row per evaluation in a record's history.

    Args:
        runs: Quality runs (``records.quality_runs``), with ``path`` and ``primary_name``.

    Returns:
        Columns task, model, method_label, seed, step, elapsed_s, value, where value is
        ``dev/<primary metric>``; rows without that key (training-loss rows, the final test
        row) are skipped. Empty when no record has dev points.
    """
    points = []
    for _, run in runs.iterrows():
        key = f"dev/{run['primary_name']}"
        history = json.loads(Path(run["path"]).read_text(encoding="utf-8")).get("history") or []
        for row in history:
            if isinstance(row, dict) and _finite(row.get(key)) and _finite(row.get("step")):
                points.append({
                    **{k: run[k] for k in KEYS}, "seed": run["seed"], "step": row["step"],
                    "elapsed_s": row.get("elapsed_s"), "value": row[key],
                })  # fmt: skip
    columns = [*KEYS, "seed", "step", "elapsed_s", "value"]
    return pd.DataFrame(points, columns=columns).astype({"elapsed_s": float, "value": float})


def _finite(value: object) -> bool:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return is_number and math.isfinite(value)


def seed_curves(points: pd.DataFrame) -> pd.DataFrame:
    """Averages the seeds of each method at each evaluation step.

    Args:
        points: Output of :func:`load_histories`.

    Returns:
        One row per (task, model, method_label, step) with mean, min and max of the score,
        the mean elapsed_s and n (seeds that evaluated at that step), sorted by step.
    """
    grouped = points.groupby([*KEYS, "step"], sort=True)
    curves = grouped.agg(
        mean=("value", "mean"),
        min=("value", "min"),
        max=("value", "max"),
        elapsed_s=("elapsed_s", "mean"),
        n=("value", "size"),
    )
    return curves.reset_index()


def plot_convergence(runs: pd.DataFrame, agg: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Writes ``convergence.{png,svg}``: a column per (model, task), dev score vs step on
    top and vs seconds below.

    Args:
        runs: Quality runs, to read their histories.
        agg: Output of ``stats.aggregate`` (task scale and direction, method colours).
        out_dir: Existing directory to write into.

    Returns:
        Paths written; empty when no record has dev points in its history.
    """
    curves = seed_curves(load_histories(runs))
    if curves.empty:
        return []
    tasks, colors = task_infos(agg), method_colors(agg)
    panels = sorted(curves.groupby(["model", "task"]).groups)
    fig = new_figure(4.2 * len(panels), 6.4)
    grid = fig.subplots(len(X_AXES), len(panels), squeeze=False)
    for col, (model, task) in enumerate(panels):
        panel = curves[(curves["model"] == model) & (curves["task"] == task)]
        title = task if curves["model"].nunique() == 1 else f"{task} ({model})"
        for row, (x, label) in enumerate(X_AXES):
            _draw(grid[row][col], panel, x, tasks[task], colors)
            grid[row][col].set(title=title, xlabel=label)
    return save_figure(fig, out_dir / STEM)


def _draw(ax: Axes, panel: pd.DataFrame, x: str, task: TaskInfo, colors: dict[str, tuple]) -> None:
    for method, curve in panel.groupby("method_label", sort=True):
        curve = curve[curve[x].notna()]
        color = colors.get(method, "0.3")
        ax.plot(curve[x], curve["mean"] * task.scale, marker="o", ms=3, color=color, label=method)
        if (curve["n"] > 1).any():  # the band is the spread of the seeds, none for one seed
            ax.fill_between(
                curve[x], curve["min"] * task.scale, curve["max"] * task.scale,
                color=color, alpha=0.15, lw=0,
            )  # fmt: skip
    unit = " ×100" if task.scale != 1 else ""
    arrow = "↑" if task.higher_is_better else "↓"
    ax.set_ylabel(f"dev {task.metric}{unit} {arrow}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
