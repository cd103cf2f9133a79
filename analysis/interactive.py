"""The explorable part of report.html: Plotly charts, filters and a sortable table.

Everything runs in the page itself: plotly.js is inlined once (about 4.8 MB), the filter and
sort code is a few lines of plain JavaScript, and the chart data is JSON in the page, so
the report still works from ``file://`` on a machine with no network.

The charts show what the comparison table shows: per (model, task) panel, one point per
row label (method, budget and recipe) at its seed mean, with the table's 95% interval of
the mean as the error bar; hovering a point names its run ids and recipe and lists its
seeds, interval and costs. The matplotlib PNG/SVG plots stay the paper-ready outputs.

Filters (task, model, method checkboxes) hide table rows, task columns, whole tables (a
model), chart traces and the runs' rows of the reproducibility table. The page reads its
state from the URL fragment on load and writes it back on every change, so a view can be
linked: ``report.html#method=lora,bitfit``, ``#task=polarity``,
``#sort=Avg.%20rank&dir=desc`` (``sort`` names a column header).

plotly.js and the page script are not scrubbed of secrets: they are fixed code, and the
scrubber's ``name=value`` rule would corrupt minified JavaScript (``z.key=function...``).
:func:`render_charts` leaves placeholders in the page and :func:`inline_scripts` fills
them after the record-derived text has been scrubbed.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import pandas as pd
from matplotlib.colors import to_hex

from analysis.plots import CostAxis, method_colors, shown_axes, shown_interval
from analysis.stats import GROUP, near_front, pareto_front
from analysis.tables import TaskInfo, task_infos

# Placeholders that survive scrubbing (no ``=``, no secret-looking words) and that escaped
# record text cannot contain (``<`` is always escaped there).
PLOTLY_SLOT = "<!--peftbench:plotly.js-->"
APP_SLOT = "<!--peftbench:explore.js-->"
FACETS = ("task", "model", "method")
# Run ids listed in one hover box; the rest are counted.
MAX_HOVER_RUNS = 6
CHART_TITLES = {
    "score_vs_params": "Score vs % trainable parameters (log x)",
    "score_vs_memory": "Score vs peak training memory",
    "score_vs_time": "Score vs training time",
    "score_vs_step": "Score vs training step time (clean cost run)",
    "score_vs_train_memory": "Score vs training memory (clean cost run)",
}
_APP_JS = Path(__file__).with_name("explore.js")
_PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}


def render_controls(agg: pd.DataFrame, runs: pd.DataFrame) -> str:
    """The filter bar, and the JSON index of the rows the page script filters by.

    Args:
        agg: Output of ``stats.aggregate`` (the rows of the comparison table).
        runs: The quality runs behind ``agg`` (the rows of the reproducibility table).

    Returns:
        HTML: ``<form id="filters">`` (one checkbox per task, model and method) and
        ``<script type="application/json" id="explore-index">``: ``rows`` (model -> row
        label -> method, since a label such as ``lora@0.5% (lr=0.001)`` names its method
        only in part) and ``runs`` (run id -> task, model, method).
    """
    rows: dict[str, dict[str, str]] = {}
    for row in agg.itertuples():
        rows.setdefault(row.model, {})[row.method_label] = row.method
    run_index = {
        run.run_id: {"task": run.task, "model": run.model, "method": run.method}
        for run in runs.itertuples()
    }
    index = {"rows": rows, "runs": run_index}
    # "</" cannot end the script element from inside JSON: escape the slash.
    index_json = json.dumps(index, sort_keys=True).replace("</", "<\\/")
    return (
        f"{_filters_html(agg)}\n"
        f'<script type="application/json" id="explore-index">{index_json}</script>'
    )


def render_charts(agg: pd.DataFrame, runs: pd.DataFrame) -> str:
    """The interactive charts, with the script slots, as an HTML fragment.

    Args:
        agg: Output of ``stats.aggregate`` (the rows of the comparison table).
        runs: The quality runs ``agg`` was built from, for the run ids and recipes.

    Returns:
        HTML: ``<section id="explore">`` with one chart per cost some run recorded
        (:data:`CHART_TITLES`), :data:`PLOTLY_SLOT` before them and :data:`APP_SLOT` after,
        where :func:`inline_scripts` puts the code.
    """
    points = chart_points(agg, runs)
    tasks = task_infos(agg)
    colors = {m: to_hex(c) for m, c in method_colors(agg).items()}
    charts = [
        _chart_html(stem, axis, points, tasks, colors) for stem, axis in shown_axes(points).items()
    ]
    return (
        '<section id="explore">\n<h2>Interactive charts</h2>\n<p class="meta">Hover a point '
        "for its runs, recipe, seeds, interval and costs; bars: the table's 95% interval of "
        "the mean; hollow: off the Pareto frontier, but its interval reaches it. Click a "
        "legend entry to hide or show a row label.</p>\n"
        f"{PLOTLY_SLOT}\n" + "\n".join(charts) + f"\n{APP_SLOT}\n</section>"
    )


def inline_scripts(document: str) -> str:
    """Fills the script slots of a (scrubbed) page with plotly.js and the page script.

    Args:
        document: The page, with :data:`PLOTLY_SLOT` and :data:`APP_SLOT` once each, or
            neither (a page without the explore section is returned unchanged).

    Returns:
        The page with both scripts inline.

    Raises:
        ValueError: If a slot is present but not exactly once.
    """
    counts = {slot: document.count(slot) for slot in (PLOTLY_SLOT, APP_SLOT)}
    if not any(counts.values()):
        return document
    if set(counts.values()) != {1}:
        raise ValueError(f"report page has script slots {counts}; expected each once")
    from plotly.offline import get_plotlyjs  # here: only the HTML page needs plotly

    plotly_js = f'<script id="plotly-js">{get_plotlyjs()}</script>'
    app_js = f'<script id="explore-js">{_APP_JS.read_text(encoding="utf-8")}</script>'
    # str.replace, not re.sub: the scripts hold backslashes that re would interpret.
    return document.replace(PLOTLY_SLOT, plotly_js).replace(APP_SLOT, app_js)


def chart_points(agg: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per table cell with what its chart point shows.

    Args:
        agg: Output of ``stats.aggregate``.
        runs: The quality runs behind ``agg``.

    Returns:
        ``agg`` plus ``run_ids`` (sorted list) and ``recipes`` (sorted recipe hashes) of
        the runs each row averages.
    """
    keys = list(GROUP)
    grouped = runs.groupby(keys, sort=True)
    ids = grouped["run_id"].agg(lambda s: sorted(set(s))).rename("run_ids")
    parts = [ids]
    if "recipe_hash" in runs:
        parts.append(grouped["recipe_hash"].agg(lambda s: sorted(set(s))).rename("recipes"))
    extra = pd.concat(parts, axis=1).reset_index()
    points = agg.merge(extra, on=keys, how="left", validate="one_to_one")
    if "recipes" not in points:
        points["recipes"] = [[] for _ in range(len(points))]
    return points


def hover_text(point: pd.Series, task: TaskInfo) -> str:
    """The hover box of one chart point (Plotly's HTML subset; record text escaped).

    Args:
        point: A row of :func:`chart_points`.
        task: How the task's scores are shown (scale).

    Returns:
        Lines joined by ``<br>``: label and panel, run ids, recipe, seeds, mean and
        interval, % params, peak memory and train time (a clean cost run's training
        memory and step where the report was given one).
    """
    e = html.escape
    scale = task.scale
    ids = list(point["run_ids"])
    shown = ", ".join(e(i) for i in ids[:MAX_HOVER_RUNS])
    if len(ids) > MAX_HOVER_RUNS:
        shown += f", … (+{len(ids) - MAX_HOVER_RUNS})"
    recipes = ", ".join(e(r) for r in point["recipes"]) or "–"
    score = f"{point['mean'] * scale:.1f}"
    if point["ci_method"] in ("t", "bca") and not math.isnan(point["ci_low"]):
        low, high = point["ci_low"] * scale, point["ci_high"] * scale
        name = "Student's t" if point["ci_method"] == "t" else "BCa"
        score += f", 95% interval [{low:.1f}, {high:.1f}] ({name})"
    else:
        score += " (1 seed: no interval)"
    unit = " ×100" if scale != 1 else ""
    lines = [
        f"<b>{e(point['method_label'])}</b> · {e(point['task'])} · {e(point['model'])}",
        f"run ids: {shown}",
        f"recipe: {recipes}",
        f"seeds: {int(point['n'])}",
        f"{e(task.metric)}{unit}: {score}",
        f"% params: {_number(point['trainable_pct'], '{:.3g}')}",
        *_cost_lines(point),
    ]
    return "<br>".join(lines)


def _cost_lines(point: pd.Series) -> list[str]:
    """Memory and time: a clean cost run's where the report was given one, else the records'."""
    if "train_mem_clean_bytes" in point and not math.isnan(point["train_mem_clean_bytes"]):
        memory = f"train mem (clean run): {point['train_mem_clean_bytes'] / 1e6:,.1f} MB"
    else:
        memory = f"peak mem: {_number(point['peak_mem_bytes'] / 1e6, '{:,.1f} MB')}"
    if "step_ms_clean" in point and not math.isnan(point["step_ms_clean"]):
        time = f"step (clean run): {point['step_ms_clean']:,.1f} ms"
    else:
        time = f"train time: {_number(point['train_time_s'], '{:,.1f} s')}"
    return [memory, time]


def _number(value: float, pattern: str) -> str:
    return "–" if value is None or math.isnan(value) else pattern.format(value)


def _filters_html(agg: pd.DataFrame) -> str:
    groups = []
    for facet in FACETS:
        values = sorted(agg[facet].unique())
        boxes = "".join(
            f'<label><input type="checkbox" data-facet="{facet}" value="{html.escape(v)}" '
            f"checked> {html.escape(v)}</label>"
            for v in values
        )
        groups.append(f'<fieldset data-facet="{facet}"><legend>{facet}</legend>{boxes}</fieldset>')
    return (
        '<form id="filters" class="filters" onsubmit="return false">'
        + "".join(groups)
        + '<p class="meta" id="filter-status"></p></form>'
        '<p class="meta">Filters hide table rows (method), task columns (task) and whole '
        "tables (model), the matching chart points and reproducibility rows; Avg. and ranks "
        "stay those of all tasks. Click a column header to sort. The view is kept in the address "
        "(<code>#method=lora&amp;sort=Avg.%20rank</code>), so it can be linked.</p>"
    )


def _chart_html(
    stem: str,
    axis: CostAxis,
    points: pd.DataFrame,
    tasks: dict[str, TaskInfo],
    colors: dict[str, str],
) -> str:
    from plotly.subplots import make_subplots  # here: only the HTML page needs plotly

    models, names = sorted(points["model"].unique()), sorted(tasks)
    titles = [n if len(models) == 1 else f"{n} ({m})" for m in models for n in names]
    fig = make_subplots(
        rows=len(models), cols=len(names), subplot_titles=titles, horizontal_spacing=0.08
    )
    in_legend: set[str] = set()  # one entry per row label (the page script keeps it so)
    for row, model in enumerate(models, start=1):
        for col, name in enumerate(names, start=1):
            panel = points[(points["model"] == model) & (points["task"] == name)]
            for trace in _panel_traces(panel, tasks[name], axis, colors, model):
                trace.showlegend = trace.legendgroup not in in_legend
                in_legend.add(trace.legendgroup)
                fig.add_trace(trace, row=row, col=col)
            task = tasks[name]
            unit = " ×100" if task.scale != 1 else ""
            arrow = "↑" if task.higher_is_better else "↓"
            fig.update_yaxes(title_text=f"{task.metric} ({task.split}){unit} {arrow}",
                             row=row, col=col)  # fmt: skip
            fig.update_xaxes(title_text=axis.label, type="log" if axis.log else "linear",
                             row=row, col=col)  # fmt: skip
    fig.update_layout(
        title_text=CHART_TITLES.get(stem, stem),
        height=160 + 340 * len(models),
        margin={"t": 90, "l": 60, "r": 20, "b": 50},
        hoverlabel={"align": "left"},
        template="plotly_white",
        legend={"title": {"text": "row label"}},
    )
    div = fig.to_html(
        include_plotlyjs=False, full_html=False, div_id=f"chart-{stem}", config=_PLOTLY_CONFIG
    )
    return f'<figure class="chart" data-chart="{stem}">{div}</figure>'


def _panel_traces(
    panel: pd.DataFrame, task: TaskInfo, axis: CostAxis, colors: dict[str, str], model: str
) -> list:
    import plotly.graph_objects as go

    panel = panel[panel[axis.column].notna()]
    if axis.log:
        panel = panel[panel[axis.column] > 0]  # a log axis cannot show zero cost
    if panel.empty:
        return []
    x = panel[axis.column].to_numpy(dtype=float) / axis.divisor
    y = panel["mean"].to_numpy(dtype=float) * task.scale
    low, high = shown_interval(panel, task)
    better_end = high if task.higher_is_better else low
    hollow = near_front(x, y, better_end, higher_is_better=task.higher_is_better)
    traces = []
    for i, (_, point) in enumerate(panel.iterrows()):
        label, color = point["method_label"], colors[point["method_label"]]
        has_ci = not math.isnan(low[i])
        traces.append(
            go.Scatter(
                x=[x[i]],
                y=[y[i]],
                mode="markers",
                name=label,
                legendgroup=label,
                marker={
                    "color": "white" if hollow[i] else color,
                    "size": 10,
                    "line": {"color": color, "width": 2},
                },
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "visible": has_ci,
                    "array": [high[i] - y[i] if has_ci else 0],
                    "arrayminus": [y[i] - low[i] if has_ci else 0],
                    "color": color,
                },
                hovertext=[hover_text(point, task)],
                hoverinfo="text",
                meta={
                    "kind": "point",
                    "label": label,
                    "method": point["method"],
                    "task": task.name,
                    "model": model,
                    "color": color,
                    "better": better_end[i] if has_ci else None,
                },
            )  # fmt: skip
        )
    front = pareto_front(x, y, higher_is_better=task.higher_is_better)
    order = x[front].argsort()
    fx, fy = list(x[front][order]) + [x.max()], list(y[front][order]) + [y[front][order][-1]]
    traces.append(
        go.Scatter(
            x=fx,
            y=fy,
            mode="lines",
            line={"shape": "hv", "dash": "dash", "color": "#888"},
            name="Pareto frontier",
            legendgroup="frontier",
            hoverinfo="skip",
            meta={
                "kind": "frontier",
                "task": task.name,
                "model": model,
                "hib": task.higher_is_better,
            },
        )  # fmt: skip
    )
    return traces
