"""Score vs cost plots with the Pareto frontier, one panel per (model, task).

Figures are built with the object API on an Agg canvas: no pyplot global state and no
display needed, so plotting works the same on a headless cluster node and in tests.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from matplotlib.transforms import Bbox

import analysis.clean_costs as clean_costs
from analysis.stats import near_front, pareto_front
from analysis.tables import TaskInfo, task_infos


@dataclass(frozen=True)
class CostAxis:
    """One cost to put on the x axis."""

    column: str
    label: str
    log: bool
    divisor: float = 1.0


COST_AXES = {
    "score_vs_params": CostAxis("trainable_pct", "% trainable parameters", log=True),
    "score_vs_time": CostAxis("train_time_s", "train time (s)", log=False),
    "score_vs_memory": CostAxis("peak_mem_bytes", "peak memory (MB)", log=False, divisor=1e6),
    # a clean cost run's figures, where the report was given one (analysis.clean_costs): they
    # replace the two above, which runs sharing the machine inflate
    "score_vs_step": CostAxis("step_ms_clean", "training step, clean cost run (ms)", log=False),
    "score_vs_train_memory": CostAxis(
        "train_mem_clean_bytes", "training memory, clean cost run (MB)", log=False, divisor=1e6
    ),
    # record.forgetting.value: one measure per panel (a task has one head); docs/MEASUREMENT.md
    "score_vs_forgetting": CostAxis(
        "forgetting", "forgetting (1 - linear CKA, or LM-loss delta in nats)", log=False
    ),
}
FORMATS = ("png", "svg")


def plot_all(agg: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Writes every plot of :data:`COST_AXES` whose cost was recorded by some run (a clean
    cost run's step and memory replace the records' time and memory: ``clean_costs``).

    Args:
        agg: Output of ``stats.aggregate``.
        out_dir: Existing directory to write into.

    Returns:
        Paths written (PNG and SVG per plot).
    """
    return [
        path
        for stem, axis in shown_axes(agg).items()
        for path in plot_score_vs_cost(agg, axis, out_dir / stem)
    ]


def shown_axes(frame: pd.DataFrame) -> dict[str, CostAxis]:
    """The :data:`COST_AXES` that ``frame`` has values for, less those a clean cost run's
    columns replace."""
    present = {
        stem: axis
        for stem, axis in COST_AXES.items()
        if axis.column in frame and frame[axis.column].notna().any()
    }
    replaced = clean_costs.hidden([axis.column for axis in present.values()])
    return {stem: axis for stem, axis in present.items() if axis.column not in replaced}


def plot_score_vs_cost(agg: pd.DataFrame, axis: CostAxis, out_stem: Path) -> list[Path]:
    """Plots score against one cost: rows are models, columns are tasks.

    Each method is a point at its mean, named beside it (:func:`_name_points`), with error
    bars spanning the 95% interval of the mean (Student's t, or BCa from 10 seeds; none for
    one seed), cut at the metric's range where its scores lie in [0, 1]. The dashed step
    line is the Pareto frontier of the means, the best mean reachable at or below each
    cost; a point off the frontier whose interval reaches it is drawn hollow, since its
    seeds do not show it to be worse.

    Args:
        agg: Output of ``stats.aggregate``.
        axis: Which cost goes on the x axis.
        out_stem: Output path without suffix; one file per format in :data:`FORMATS`.

    Returns:
        Paths written.
    """
    tasks = task_infos(agg)
    models = sorted(agg["model"].unique())
    names = sorted(tasks)
    # a name is ~10 points tall: a panel of 21 methods needs room to stack them
    height = max(3.4, 0.2 * min(agg["method_label"].nunique(), _STACKED_NAMES))
    fig = new_figure(4.2 * len(names), height * len(models))
    grid = fig.subplots(len(models), len(names), squeeze=False)
    colors = method_colors(agg)
    named, any_hollow = [], False
    for row, model in enumerate(models):
        for col, name in enumerate(names):
            panel = agg[(agg["model"] == model) & (agg["task"] == name)]
            title = name if len(models) == 1 else f"{name} ({model})"
            points, hollow = _draw_panel(grid[row][col], panel, tasks[name], axis, colors, title)
            named.append((grid[row][col], points))
            any_hollow |= hollow
    _legend(fig, any_hollow)
    _name_points(fig, named)
    return save_figure(fig, out_stem)


def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (no pyplot state), laid out to fit its labels."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out_stem: Path) -> list[Path]:
    """Saves ``fig`` once per format in :data:`FORMATS`.

    Args:
        fig: The figure.
        out_stem: Output path without suffix.

    Returns:
        Paths written.
    """
    written = []
    for fmt in FORMATS:
        path = out_stem.with_suffix(f".{fmt}")
        # No date in the metadata: an unchanged report then gives byte-identical files.
        fig.savefig(path, format=fmt, dpi=150, metadata={"Date": None} if fmt == "svg" else None)
        written.append(path)
    return written


def method_colors(agg: pd.DataFrame) -> dict[str, tuple[float, ...]]:
    """One colour per method label, the same in every panel and every plot: tab10's ten
    where they suffice, else tab20 then tab20b (40 distinct; a benchmark has 21 methods)."""
    methods = sorted(agg["method_label"].unique())
    if len(methods) <= 10:
        palette = list(colormaps["tab10"].colors)
    else:
        palette = list(colormaps["tab20"].colors) + list(colormaps["tab20b"].colors)
    return {m: palette[i % len(palette)] for i, m in enumerate(methods)}


def _draw_panel(
    ax: Axes,
    panel: pd.DataFrame,
    task: TaskInfo,
    axis: CostAxis,
    colors: dict[str, tuple[float, ...]],
    title: str,
) -> tuple[list[tuple[float, float, str]], bool]:
    """Draws one panel's points, bars and frontier; returns the points to name (x, y,
    method) and whether any is hollow."""
    panel = panel[panel[axis.column].notna()]
    if axis.log:
        panel = panel[panel[axis.column] > 0]  # a log axis cannot show zero cost
    x = panel[axis.column].to_numpy(dtype=float) / axis.divisor
    y = panel["mean"].to_numpy(dtype=float) * task.scale
    low, high = shown_interval(panel, task)
    yerr = np.nan_to_num(np.vstack([y - low, high - y]))  # n = 1: no interval, no bar
    better_end = high if task.higher_is_better else low
    hollow = near_front(x, y, better_end, higher_is_better=task.higher_is_better)
    methods = list(panel["method_label"])
    for i, method in enumerate(methods):
        color = colors[method]
        ax.errorbar(
            x[i], y[i], yerr=yerr[:, i : i + 1], fmt="o", capsize=3, color=color,
            markerfacecolor="white" if hollow[i] else color,
        )  # fmt: skip
    if x.size:
        _draw_frontier(ax, x, y, higher_is_better=task.higher_is_better)
    else:
        ax.text(0.5, 0.5, "no runs with this cost", transform=ax.transAxes, ha="center")
    ax.margins(x=0.15, y=0.08)  # room for the names at the edges
    if axis.log:
        _log_ticks(ax)
    unit = " ×100" if task.scale != 1 else ""
    arrow = "↑" if task.higher_is_better else "↓"
    ax.set(title=title, xlabel=axis.label, ylabel=f"{task.metric} ({task.split}){unit} {arrow}")
    ax.grid(alpha=0.3)
    return list(zip(x, y, methods, strict=True)), bool(hollow.any())


def shown_interval(panel: pd.DataFrame, task: TaskInfo) -> tuple[np.ndarray, np.ndarray]:
    """The 95% interval of each row's mean in display units, cut at the metric's range where
    its scores lie in [0, 1]: a t interval past them (a collapsed seed's) shows nothing
    attainable and would stretch the axis over it."""
    low, high = (panel[k].to_numpy(dtype=float) for k in ("ci_low", "ci_high"))
    if task.scale != 1:
        low, high = np.clip(low, 0, 1), np.clip(high, 0, 1)
    return low * task.scale, high * task.scale


def _log_ticks(ax: Axes) -> None:
    """Plain numbers (0.1, 1, 10, not 10⁻¹); the 2 and 5 between decades named only where
    the axis spans few decades, since over four or more their labels run into each other."""
    ax.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    low, high = ax.get_xlim()
    ax.xaxis.set_minor_formatter(plain if np.log10(high / low) <= 2.5 else NullFormatter())


def _legend(fig: Figure, hollow: bool) -> None:
    """One legend for the figure, below the panels, where it covers no point or name."""
    handles = [Line2D([], [], linestyle="--", color="0.5", lw=1, label="Pareto frontier")]
    if hollow:
        handles.append(
            Line2D([], [], marker="o", linestyle="", color="0.3", markerfacecolor="white",
                   label="off the frontier, interval reaches it")
        )  # fmt: skip
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)


#: Where a point's name may go, in order of preference: (dx, dy) in points from the point,
#: the name extending right of it (side 1) or left (-1). Beside it first, then ever further up
#: or down, so that a crowd of points near the frontier gets columns of names, not a pile.
_NAME_SPOTS = np.array(
    [
        (side * (6 + abs(dy) // 4), dy, side)
        for dy in (0, *(sign * step for step in range(8, 400, 8) for sign in (1, -1)))
        for side in (1, -1)
    ],
    dtype=float,
)
_NAME_SIZE = 8  # points
_STACKED_NAMES = 40  # a panel grows to stack this many names; past it they may overlap


def _name_points(fig: Figure, panels: list[tuple[Axes, list[tuple[float, float, str]]]]) -> None:
    """Names each point at the first spot of :data:`_NAME_SPOTS` where its name stays in the
    panel and overlaps no other name or point, with a thin line back to the point when it
    had to move away; where no spot is free, at the one that overlaps least.

    The spots are tested in display coordinates, so the layout is computed first and then
    frozen: the names are placed in the figure as it will be saved (offsets are in points,
    so they hold at any dpi).
    """
    fig.canvas.draw()
    fig.set_layout_engine("none")
    renderer = fig.canvas.get_renderer()
    scale = fig.dpi / 72  # pixels per point
    for ax, points in panels:
        pixels = ax.transData.transform([(x, y) for x, y, _ in points]) if points else []
        half = 4 * scale  # a marker's half width
        taken = [(u - half, v - half, u + half, v + half) for u, v in pixels]
        order = sorted(range(len(points)), key=lambda i: -points[i][1])  # top of the panel first
        for i in order:
            x, y, method = points[i]
            size = Text(0, 0, method, fontsize=_NAME_SIZE, figure=fig).get_window_extent(renderer)
            spot, box = _free_spot(pixels[i], size.width, size.height, scale, taken, ax.bbox)
            dx, dy, side = _NAME_SPOTS[spot]
            line = {"arrowstyle": "-", "color": "0.6", "lw": 0.5, "shrinkA": 1, "shrinkB": 4}
            ax.annotate(
                method, (x, y), textcoords="offset points", xytext=(dx, dy),
                ha="left" if side > 0 else "right", va="center", fontsize=_NAME_SIZE,
                arrowprops=line if abs(dy) > 4 else None,
            )  # fmt: skip
            taken.append(box)


def _free_spot(anchor, width: float, height: float, scale: float, taken: list, frame: Bbox):
    """The index of the first of :data:`_NAME_SPOTS` where a ``width`` x ``height`` name at
    ``anchor`` stays inside ``frame`` and overlaps none of the ``taken`` boxes (x0, y0, x1,
    y1), else of the one inside that overlaps least, else 0 (beside the point); and the
    name's box there. Every spot at once: a grid report names a hundred points per panel."""
    dx, dy, side = _NAME_SPOTS.T
    left = np.where(side > 0, anchor[0] + dx * scale, anchor[0] + dx * scale - width)
    low = anchor[1] + dy * scale - height / 2
    boxes = np.column_stack([left, low, left + width, low + height])
    held = np.asarray(taken, dtype=float).reshape(-1, 4)
    wide = np.minimum(boxes[:, None, 2], held[:, 2]) - np.maximum(boxes[:, None, 0], held[:, 0])
    tall = np.minimum(boxes[:, None, 3], held[:, 3]) - np.maximum(boxes[:, None, 1], held[:, 1])
    overlap = (wide.clip(min=0) * tall.clip(min=0)).sum(axis=1)
    inside = (
        (boxes[:, 0] >= frame.x0) & (boxes[:, 2] <= frame.x1)
        & (boxes[:, 1] >= frame.y0) & (boxes[:, 3] <= frame.y1)
    )  # fmt: skip
    overlap[~inside] = np.inf
    spot = int(np.argmin(overlap)) if inside.any() else 0  # argmin: the first of equal ones
    return spot, tuple(boxes[spot])


def _draw_frontier(ax: Axes, x: np.ndarray, y: np.ndarray, *, higher_is_better: bool) -> None:
    front = pareto_front(x, y, higher_is_better=higher_is_better)
    order = np.argsort(x[front])
    fx, fy = x[front][order], y[front][order]
    # Carry the last level to the costliest point: spending more does not buy a better score.
    fx, fy = np.append(fx, x.max()), np.append(fy, fy[-1])
    ax.step(fx, fy, where="post", linestyle="--", color="0.5", lw=1, label="Pareto frontier")


TRAIN_SIZE_STEM = "score_vs_train_size"
_TRAIN_SIZE_KEY = "task.train_size"


def train_size_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Seed aggregates per (task, model, method, training size), for the low-resource plot.

    A method's runs at several ``task.train_size`` values form one curve: its label is the
    recipe label computed without ``task.train_size`` (``lora``, or ``lora (lr=0.001)`` when
    other recipes of lora differ). x is the number of training examples the runs really used
    (``data.n.train``), so a fraction and the whole split sit at their counts.

    Args:
        runs: Quality runs (``records.quality_runs``) with ``n_train`` recorded.

    Returns:
        One row per point: task, model, curve, n_train, and the :class:`stats.Summary`
        fields of the primary score over seeds (the interval the comparison table shows).
        Empty when no (task, model) has runs at two or more training sizes.
    """
    from analysis.frame import recipe_labels
    from analysis.stats import summarize

    runs = runs[runs["n_train"].notna()]
    if runs.empty:
        return pd.DataFrame()
    sizes = runs.groupby(["task", "model"])["n_train"].nunique()
    runs = runs.set_index(["task", "model"]).loc[sizes[sizes > 1].index].reset_index()
    if runs.empty:
        return pd.DataFrame()
    recipes = [{k: v for k, v in r.items() if k != _TRAIN_SIZE_KEY} for r in runs["recipe"]]
    stripped = runs.assign(
        recipe=recipes,
        recipe_hash=[json.dumps(r, sort_keys=True, default=str) for r in recipes],
    )
    runs = runs.assign(curve=recipe_labels(stripped))
    rows = []
    for (task, model, curve, n), group in runs.groupby(["task", "model", "curve", "n_train"]):
        summary = summarize(group["primary_value"].to_numpy(dtype=float))
        rows.append(
            {"task": task, "model": model, "curve": curve, "n_train": int(n), **asdict(summary)}
        )
    return pd.DataFrame(rows)


def plot_score_vs_train_size(runs: pd.DataFrame, agg: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Writes ``score_vs_train_size.{png,svg}`` when runs differ in training size.

    One panel per (model, task) that has runs at two or more training sizes; a line per
    method through its mean score at each size (log x), error bars the 95% interval of the
    mean over seeds, as in the comparison table (Student's t, BCa from 10 seeds; none for
    one seed).

    Args:
        runs: Quality runs (``records.quality_runs``).
        agg: Output of ``stats.aggregate``, for the tasks' metrics and scales.
        out_dir: Existing directory to write into.

    Returns:
        Paths written; none when every run of a (task, model) used one training size.
    """
    curves = train_size_curves(runs)
    if curves.empty:
        return []
    tasks = task_infos(agg)
    panels = sorted({(m, t) for m, t in zip(curves["model"], curves["task"], strict=True)})
    fig = new_figure(4.6 * len(panels), 3.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    palette = colormaps["tab10"]
    colors = {c: palette(i % palette.N) for i, c in enumerate(sorted(curves["curve"].unique()))}
    for ax, (model, name) in zip(axes, panels, strict=True):
        info = tasks[name]
        panel = curves[(curves["model"] == model) & (curves["task"] == name)]
        for curve, line in panel.groupby("curve", sort=True):
            line = line.sort_values("n_train")
            y = line["mean"].to_numpy(dtype=float) * info.scale
            low = line["ci_low"].to_numpy(dtype=float) * info.scale
            high = line["ci_high"].to_numpy(dtype=float) * info.scale
            yerr = np.nan_to_num(np.vstack([y - low, high - y]))  # one seed: no bar
            ax.errorbar(line["n_train"], y, yerr=yerr, fmt="o-", capsize=3,
                        color=colors[curve], label=curve)  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        unit = " ×100" if info.scale != 1 else ""
        arrow = "↑" if info.higher_is_better else "↓"
        ax.set(
            title=f"{name} ({model})",
            xlabel="training examples (log)",
            ylabel=f"{info.metric} ({info.split}){unit} {arrow}",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return save_figure(fig, out_dir / TRAIN_SIZE_STEM)
