"""Convergence: dev score against optimizer steps and training seconds, and time to target.

The curves come from each record's ``history`` (rows with ``step``, ``train_s`` and
``dev/<metric>``), which the flat records frame does not hold, so the records are re-read
from their paths. Seeds are averaged per evaluation step; the band spans the seeds' range
(drawn where a panel has at most :data:`BANDS_UP_TO` methods: past that they bury the lines).
Seconds are training seconds (``train_s``: evaluation excluded), so a method evaluated more
slowly does not look slower to converge.

Time to target (as the Delta Tuning paper compares convergence): the first step and training
second at which a run's dev score reaches a fraction (default 95%) of full fine-tuning's best
dev score on the same (task, model).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from analysis.plots import method_colors, new_figure, save_figure
from analysis.tables import TaskInfo, task_infos

STEM = "convergence"
TARGET_STEM = "time_to_target"
KEYS = ["task", "model", "method_label"]
# (x column, axis label) of the two rows of the figure.
BANDS_UP_TO = 8
X_AXES = (("step", "optimizer step"), ("train_s", "training seconds (evaluation excluded)"))
#: Time to target: the dev score to reach, as a share of full fine-tuning's best dev score.
TARGET_FRACTION = 0.95
REFERENCE_METHOD = "full"


def load_histories(runs: pd.DataFrame) -> pd.DataFrame:
    """Dev-score points of every run: one row per evaluation in a record's history.

    Args:
        runs: Quality runs (``records.quality_runs``), with ``path`` and ``primary_name``.

    Returns:
        Columns task, model, method_label, seed, higher_is_better, step, elapsed_s, train_s,
        value, where value is ``dev/<primary metric>``; rows without that key (training-loss
        rows, the final test row) are skipped. Records written before ``train_s`` existed
        fall back to ``elapsed_s`` (evaluation included). Empty when no record has dev points.
    """
    points = []
    for _, run in runs.iterrows():
        key = f"dev/{run['primary_name']}"
        history = json.loads(Path(run["path"]).read_text(encoding="utf-8")).get("history") or []
        for row in history:
            if isinstance(row, dict) and _finite(row.get(key)) and _finite(row.get("step")):
                points.append({
                    **{k: run[k] for k in KEYS}, "seed": run["seed"],
                    "higher_is_better": bool(run["higher_is_better"]), "step": row["step"],
                    "elapsed_s": row.get("elapsed_s"),
                    "train_s": row.get("train_s", row.get("elapsed_s")), "value": row[key],
                })  # fmt: skip
    columns = [*KEYS, "seed", "higher_is_better", "step", "elapsed_s", "train_s", "value"]
    types = {"elapsed_s": float, "train_s": float, "value": float}
    return pd.DataFrame(points, columns=columns).astype(types)


def _finite(value: object) -> bool:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return is_number and math.isfinite(value)


def seed_curves(points: pd.DataFrame) -> pd.DataFrame:
    """Averages the seeds of each method at each evaluation step.

    Args:
        points: Output of :func:`load_histories`.

    Returns:
        One row per (task, model, method_label, step) with mean, min and max of the score,
        the mean elapsed_s and train_s and n (seeds that evaluated at that step), sorted by
        step.
    """
    grouped = points.groupby([*KEYS, "step"], sort=True)
    curves = grouped.agg(
        mean=("value", "mean"),
        min=("value", "min"),
        max=("value", "max"),
        elapsed_s=("elapsed_s", "mean"),
        train_s=("train_s", "mean"),
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
    methods = sorted(curves["method_label"].unique())
    # one legend for the figure, right of the panels: one per panel covered their curves
    fig = new_figure(4.2 * len(panels) + 1.4, max(6.4, 0.16 * len(methods)))
    grid = fig.subplots(len(X_AXES), len(panels), squeeze=False)
    for col, (model, task) in enumerate(panels):
        panel = curves[(curves["model"] == model) & (curves["task"] == task)]
        title = task if curves["model"].nunique() == 1 else f"{task} ({model})"
        for row, (x, label) in enumerate(X_AXES):
            _draw(grid[row][col], panel, x, tasks[task], colors)
            grid[row][col].set(title=title, xlabel=label)
    handles = [
        Line2D([], [], marker="o", ms=3, color=colors.get(m, "0.3"), label=m) for m in methods
    ]
    fig.legend(handles=handles, loc="outside right upper", fontsize=7)
    return save_figure(fig, out_dir / STEM)


def _draw(ax: Axes, panel: pd.DataFrame, x: str, task: TaskInfo, colors: dict[str, tuple]) -> None:
    bands = panel["method_label"].nunique() <= BANDS_UP_TO
    for method, curve in panel.groupby("method_label", sort=True):
        curve = curve[curve[x].notna()]
        color = colors.get(method, "0.3")
        ax.plot(curve[x], curve["mean"] * task.scale, marker="o", ms=3, color=color, label=method)
        if bands and (curve["n"] > 1).any():  # the seeds' spread; none for one seed
            ax.fill_between(
                curve[x], curve["min"] * task.scale, curve["max"] * task.scale,
                color=color, alpha=0.15, lw=0,
            )  # fmt: skip
    unit = " ×100" if task.scale != 1 else ""
    arrow = "↑" if task.higher_is_better else "↓"
    ax.set_ylabel(f"dev {task.metric}{unit} {arrow}")
    ax.grid(alpha=0.3)


# ------------------------------------------------------------------------ time to target


def time_to_target(
    points: pd.DataFrame, fraction: float = TARGET_FRACTION, reference: str = REFERENCE_METHOD
) -> pd.DataFrame:
    """When each method's dev score first reaches ``fraction`` of the reference's best.

    The reference score of a (task, model) is the mean over the reference method's seeds of
    each seed's best dev score; the target is ``fraction`` x that score (higher is better)
    or that score / ``fraction`` (lower is better).

    Args:
        points: Output of :func:`load_histories`.
        fraction: Share of the reference score to reach, in (0, 1].
        reference: Method label of the reference (full fine-tuning).

    Returns:
        One row per (task, model, method_label) of a (task, model) the reference ran on:
        target, runs, reached (runs that reached the target), step and train_s (means over
        the runs that reached it; NaN when none did).
    """
    rows = []
    for (task, model), group in points.groupby(["task", "model"], sort=True):
        target = _target(group, fraction, reference)
        if target is None:
            continue
        for method, runs in group.groupby("method_label", sort=True):
            hits = [_first_hit(run, target) for _, run in runs.groupby("seed")]
            reached = [hit for hit in hits if hit is not None]
            rows.append({
                "task": task, "model": model, "method_label": method, "target": target,
                "runs": len(hits), "reached": len(reached),
                "step": _mean([hit["step"] for hit in reached]),
                "train_s": _mean([hit["train_s"] for hit in reached]),
            })  # fmt: skip
    columns = [*KEYS, "target", "runs", "reached", "step", "train_s"]
    return pd.DataFrame(rows, columns=columns)


def _target(group: pd.DataFrame, fraction: float, reference: str) -> float | None:
    runs = group[group["method_label"] == reference]
    if runs.empty:
        return None
    higher = bool(runs["higher_is_better"].iloc[0])
    per_seed = runs.groupby("seed")["value"]
    best = (per_seed.max() if higher else per_seed.min()).mean()
    return best * fraction if higher else best / fraction


def _first_hit(run: pd.DataFrame, target: float) -> pd.Series | None:
    higher = bool(run["higher_is_better"].iloc[0])
    hits = run[run["value"] >= target] if higher else run[run["value"] <= target]
    return None if hits.empty else hits.sort_values("step").iloc[0]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def write_time_to_target(
    runs: pd.DataFrame, out_dir: Path, fraction: float = TARGET_FRACTION
) -> list[Path]:
    """Writes ``time_to_target.{md,csv}``; nothing when no (task, model) has a full run.

    Args:
        runs: Quality runs, to read their histories.
        out_dir: Existing directory to write into.
        fraction: Share of full fine-tuning's best dev score to reach.

    Returns:
        Paths written.
    """
    table = time_to_target(load_histories(runs), fraction)
    if table.empty:
        return []
    csv_path, md_path = out_dir / f"{TARGET_STEM}.csv", out_dir / f"{TARGET_STEM}.md"
    table.to_csv(csv_path, index=False)
    md_path.write_text(target_markdown(table, fraction), encoding="utf-8")
    return [md_path, csv_path]


def target_markdown(table: pd.DataFrame, fraction: float) -> str:
    """A Markdown table of :func:`time_to_target`'s output, with its definition above."""
    lines = [
        f"# Time to target: {fraction:.0%} of full fine-tuning's best dev score",
        "",
        "First optimizer step and training seconds (evaluation excluded) at which a run's dev "
        "score reaches the target; means over the seeds that reached it.",
        "",
        "| task | model | method | target | reached | step | train s |",
        "|:--|:--|:--|--:|--:|--:|--:|",
    ]
    for row in table.itertuples(index=False):
        step = "–" if math.isnan(row.step) else f"{row.step:.0f}"
        seconds = "–" if math.isnan(row.train_s) else f"{row.train_s:,.1f}"
        lines.append(
            f"| {row.task} | {row.model} | {row.method_label} | {row.target:.4g} "
            f"| {row.reached}/{row.runs} | {step} | {seconds} |"
        )
    return "\n".join(lines) + "\n"
