"""Plots that compare methods across tasks: average rank with its critical-difference
diagram, and scores at matched budgets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from analysis.plots import method_colors, new_figure, save_figure
from analysis.tables import ComparisonTable, TaskInfo, task_infos

RANK_STEM = "average_rank"
CD_STEM = "critical_difference"
BUDGET_STEM = "budget_matched"
_MARKERS = "osD^vP*X"


def plot_average_rank(
    tables: list[ComparisonTable], agg: pd.DataFrame, out_dir: Path
) -> list[Path]:
    """Writes ``average_rank.{png,svg}``: one panel per model, a bar per method.

    The bar is the method's average rank over tasks (1 = best, shortest bar); a marker per
    task shows the rank it is averaged from, so one lucky task is visible.

    Args:
        tables: Output of ``tables.build_tables`` (ranks per task and their mean).
        agg: Output of ``stats.aggregate``, for the method colours shared by every plot.
        out_dir: Existing directory to write into.

    Returns:
        Paths written.
    """
    colors = method_colors(agg)
    height = max(2.4, 0.45 * max(len(t.methods) for t in tables) + 1.2)
    fig = new_figure(6.4, height * len(tables))
    axes = fig.subplots(len(tables), 1, squeeze=False)[:, 0]
    for ax, table in zip(axes, tables, strict=True):
        _draw_ranks(ax, table, colors)
    return save_figure(fig, out_dir / RANK_STEM)


def _draw_ranks(ax: Axes, table: ComparisonTable, colors: dict[str, tuple]) -> None:
    order = table.avg_rank.sort_values(ascending=False)  # barh draws bottom-up: best on top
    y = np.arange(len(order))
    ax.barh(y, order.to_numpy(), color=[colors[m] for m in order.index], alpha=0.8)
    for i, task in enumerate(table.ranks.columns):
        ranks = table.ranks[task].reindex(order.index)
        ax.scatter(ranks, y, marker=_MARKERS[i % len(_MARKERS)], color="k", s=18, label=task)
    for yi, value in zip(y, order, strict=True):
        ax.annotate(f"{value:.2f}", (value, yi), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=8)  # fmt: skip
    ax.set_yticks(y, order.index)
    ax.set_xlim(0, len(table.methods) + 1)  # room for the value labels
    ax.set(
        title=f"Average rank over {len(table.tasks)} task(s) ({table.model})",
        xlabel="rank (1 = best); markers: rank on each task",
    )
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")  # the best (shortest) bar is on top


def plot_critical_difference(
    tables: list[ComparisonTable], agg: pd.DataFrame, out_dir: Path
) -> list[Path]:
    """Writes ``critical_difference.{png,svg}``: one Demšar diagram per model that has a test.

    The axis is the average rank over the tasks all compared methods share (1 = best);
    methods joined by a bar are not distinguishable by the Nemenyi post-hoc at 95%
    (scikit-posthocs draws the diagram); the title names the test across tasks and the
    critical difference (its segment is left out: it would sit on the rank labels).

    Args:
        tables: Output of ``tables.build_tables``; tables without a rank test are skipped.
        agg: Output of ``stats.aggregate``, for the method colours shared by every plot.
        out_dir: Existing directory to write into.

    Returns:
        Paths written; empty when no table has 2 methods sharing 2 tasks.
    """
    import scikit_posthocs as sp  # pulls seaborn: only when a diagram is drawn

    tested = [t for t in tables if t.rank_test is not None]
    if not tested:
        return []
    colors = method_colors(agg)
    heights = [1.4 + 0.32 * t.rank_test.k for t in tested]
    fig = new_figure(7.0, sum(heights))
    axes = fig.subplots(len(tested), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, table in zip(axes, tested, strict=True):
        test = table.rank_test
        sp.critical_difference_diagram(
            test.ranks, test.nemenyi, ax=ax,
            color_palette={m: colors[m] for m in test.ranks.index},
            label_fmt_left="{label} ({rank:.2f})", label_fmt_right="({rank:.2f}) {label}",
        )  # fmt: skip
        name = "χ²" if test.test == "Friedman" else "wins"
        ax.set_title(
            f"{table.model}: {test.test} over {test.n_blocks} tasks, {test.k} methods, "
            f"{name} = {test.statistic:.3g}, p = {test.p:.3g}; "
            f"Nemenyi CD = {test.cd:.2f} ({test.null})",
            fontsize=9, pad=18,
        )  # fmt: skip
    return save_figure(fig, out_dir / CD_STEM)


def plot_budget_matched(agg: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Writes ``budget_matched.{png,svg}`` when some runs carry ``experiment.budget_pct``.

    One panel per (model, task): score against the trainable-parameter budget (log x), a
    line per method (and recipe) through its budgets, so methods are compared at the same
    budget; bars are the 95% interval of the mean (none for one seed).
    Methods run without a budget (e.g. full fine-tuning) are dashed horizontal references.

    Args:
        agg: Output of ``stats.aggregate``.
        out_dir: Existing directory to write into.

    Returns:
        Paths written; empty when no run has a budget.
    """
    budgeted = agg["budget_pct"].notna()
    if not budgeted.any():
        return []
    tasks, colors = task_infos(agg), method_colors(agg)
    panels = sorted(agg[budgeted].groupby(["model", "task"]).groups)
    fig = new_figure(4.6 * len(panels), 3.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (model, task) in zip(axes, panels, strict=True):
        panel = agg[(agg["model"] == model) & (agg["task"] == task)]
        title = task if agg["model"].nunique() == 1 else f"{task} ({model})"
        _draw_budgets(ax, panel, tasks[task], colors)
        ax.set_title(title)
    return save_figure(fig, out_dir / BUDGET_STEM)


def _draw_budgets(ax: Axes, panel: pd.DataFrame, task: TaskInfo, colors: dict[str, tuple]) -> None:
    budgeted = panel[panel["budget_pct"].notna()]
    # One line per method and recipe: "lora@0.5% (lr=0.001)" joins "lora@1% (lr=0.001)".
    recipe = budgeted["method_label"].str.extract(r"( \(.*\))$", expand=False).fillna("")
    for line, rows in budgeted.groupby(budgeted["method"] + recipe, sort=True):
        rows = rows.sort_values("budget_pct")
        color = colors[rows["method_label"].iloc[0]]
        y = rows["mean"].to_numpy(dtype=float) * task.scale
        low = rows["ci_low"].to_numpy(dtype=float) * task.scale
        high = rows["ci_high"].to_numpy(dtype=float) * task.scale
        ax.errorbar(
            rows["budget_pct"], y, yerr=np.nan_to_num(np.vstack([y - low, high - y])),
            marker="o", capsize=3, color=color, label=line,
        )  # fmt: skip
    for _, row in panel[panel["budget_pct"].isna()].iterrows():
        ax.axhline(row["mean"] * task.scale, ls="--", lw=1, color=colors[row["method_label"]],
                   label=f"{row['method_label']} (no budget)")  # fmt: skip
    ax.set_xscale("log")
    unit = " ×100" if task.scale != 1 else ""
    arrow = "↑" if task.higher_is_better else "↓"
    ax.set(
        xlabel="trainable-parameter budget (%)",
        ylabel=f"{task.metric} ({task.split}){unit} {arrow}",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
