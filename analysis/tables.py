"""The main comparison table (Delta-Tuning style): methods x tasks, Avg., Avg. rank, costs.

:func:`build_tables` computes everything a table shows (scores, best, ties, ranks, costs)
once; the writers only format it, so Markdown, CSV and LaTeX cannot disagree.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from analysis.stats import COST_COLUMNS

SCORE_FIELDS = ("mean", "std", "n", "ci_low", "ci_high")


@dataclass(frozen=True)
class TaskInfo:
    """How one task's scores are read and shown."""

    name: str
    metric: str
    split: str
    higher_is_better: bool
    scale: float  # 100 when every score of the task lies in [0, 1], else 1


@dataclass(frozen=True)
class ComparisonTable:
    """Everything shown in the comparison table of one model, in raw (unscaled) units."""

    model: str
    tasks: list[TaskInfo]
    methods: list[str]
    cells: pd.DataFrame  # index (method_label, task); columns SCORE_FIELDS
    avg: pd.Series  # per method; NaN when the tasks' scales or directions differ
    ranks: pd.DataFrame  # per method (rows) and task (columns); 1 = best, ties averaged
    avg_rank: pd.Series  # per method; mean of its rows in ranks
    cost: pd.DataFrame  # per method; COST_COLUMNS, mean over tasks of the seed means
    best: dict[str, frozenset[str]]  # per task (and "Avg.", "Avg. rank"): best methods
    tied: dict[str, frozenset[str]]  # per task: CI overlaps the best method's CI

    @property
    def avg_comparable(self) -> bool:
        """Whether averaging over tasks makes sense: same scale and direction everywhere."""
        return _comparable(self.tasks)


def _comparable(tasks: list[TaskInfo]) -> bool:
    return len({(t.scale, t.higher_is_better) for t in tasks}) == 1


def build_tables(agg: pd.DataFrame) -> list[ComparisonTable]:
    """Builds one comparison table per model from seed aggregates.

    Args:
        agg: Output of ``stats.aggregate`` (quality runs only).

    Returns:
        Tables sorted by model name; methods and tasks are sorted by name for stable output.
    """
    tasks = task_infos(agg)
    return [_build_one(model, group, tasks) for model, group in agg.groupby("model", sort=True)]


def task_infos(agg: pd.DataFrame) -> dict[str, TaskInfo]:
    """Metric, direction and display scale of each task in ``agg``.

    Args:
        agg: Output of ``stats.aggregate``.

    Returns:
        TaskInfo per task name. The scale is x100 for a metric whose perfect score is 1
        (accuracy, F1, MCC, correlations) and x1 for one already on a 0-100 scale (BLEU,
        chrF), as ``tasks.metrics`` declares; a metric it does not know is x100 when every
        score of the task, over all models and methods, lies in [0, 1].
    """
    infos = {}
    for task, group in agg.groupby("task", sort=True):
        first = group.iloc[0]
        infos[task] = TaskInfo(
            name=task,
            metric=first["metric"],
            split=first["split"],
            higher_is_better=bool(first["higher_is_better"]),
            scale=_display_scale(first["metric"], group),
        )
    return infos


def _display_scale(metric: str, group: pd.DataFrame) -> float:
    from tasks.metrics import METRICS  # here: it imports scikit-learn, which tables need not

    if metric in METRICS:  # the declared range, not the values: a BLEU of 0.7 is not 70
        return 100.0 if METRICS[metric].best == 1.0 else 1.0
    in_unit_range = bool(((group["min"] >= 0) & (group["max"] <= 1)).all())
    return 100.0 if in_unit_range else 1.0


def _build_one(model: str, agg: pd.DataFrame, infos: dict[str, TaskInfo]) -> ComparisonTable:
    tasks = [infos[t] for t in sorted(agg["task"].unique())]
    cells = agg.set_index(["method_label", "task"])[list(SCORE_FIELDS)]
    means = cells["mean"].unstack("task")
    best, tied, ranks = {}, {}, {}
    for task in tasks:
        column = means[task.name].dropna()
        ranks[task.name] = column.rank(ascending=not task.higher_is_better, method="average")
        best[task.name] = frozenset(column[ranks[task.name] == ranks[task.name].min()].index)
        tied[task.name] = _tied_with_best(cells.xs(task.name, level="task"), best[task.name])
    ranks = pd.DataFrame(ranks)
    avg_rank = ranks.mean(axis=1)
    # Averages over different task sets are not comparable: only methods run on every task
    # of the table can be marked best.
    complete = means.notna().all(axis=1)
    best["Avg. rank"] = _argbest(avg_rank[complete], higher_is_better=False)
    avg = means.mean(axis=1)
    if _comparable(tasks):
        best["Avg."] = _argbest(avg[complete], higher_is_better=tasks[0].higher_is_better)
    else:
        avg[:] = math.nan  # e.g. accuracy x100 next to a loss: an average means nothing
    return ComparisonTable(
        model=model,
        tasks=tasks,
        methods=sorted(means.index),
        cells=cells,
        avg=avg,
        ranks=ranks,
        avg_rank=avg_rank,
        cost=agg.groupby("method_label")[list(COST_COLUMNS)].mean(),
        best=best,
        tied=tied,
    )


def _tied_with_best(task_cells: pd.DataFrame, best: frozenset[str]) -> frozenset[str]:
    """Methods (other than the best) whose CI overlaps the CI of a best method."""
    tied = set()
    for b in best:
        low, high = task_cells.loc[b, "ci_low"], task_cells.loc[b, "ci_high"]
        overlap = (task_cells["ci_low"] <= high) & (task_cells["ci_high"] >= low)
        tied |= set(task_cells.index[overlap])
    return frozenset(tied - best)


def _argbest(values: pd.Series, *, higher_is_better: bool) -> frozenset[str]:
    values = values.dropna()
    if values.empty:
        return frozenset()
    target = values.max() if higher_is_better else values.min()
    return frozenset(values.index[values == target])


# ---------------------------------------------------------------------------------- writers


@dataclass(frozen=True)
class _Style:
    """The symbols of one output format, so one formatter serves Markdown and LaTeX."""

    escape: Callable[[str], str]
    bold: Callable[[str], str]
    dagger: str
    pm: str
    times: str
    up: str
    down: str
    missing: str


def latex_escape(text: str) -> str:
    """Escapes LaTeX special characters (``_``, ``%``, ``&`` ...) in plain text.

    Args:
        text: Plain text such as a method, task or metric name.

    Returns:
        Text that LaTeX typesets literally.
    """
    specials = {
        "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
        "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    }  # fmt: skip
    return "".join(specials.get(ch, ch) for ch in text)


_MARKDOWN = _Style(
    escape=lambda s: s.replace("|", r"\|"),
    bold=lambda s: f"**{s}**",
    dagger="†",
    pm="±",
    times="×",
    up="↑",
    down="↓",
    missing="–",
)
_LATEX = _Style(
    escape=latex_escape,
    bold=lambda s: rf"\textbf{{{s}}}",
    dagger=r"$^\dagger$",
    pm=r"$\pm$",
    times=r"$\times$",
    up=r"$\uparrow$",
    down=r"$\downarrow$",
    missing="--",
)
_HTML = _Style(
    escape=html.escape,
    bold=lambda s: f"<strong>{s}</strong>",
    dagger="†",
    pm="±",
    times="×",
    up="↑",
    down="↓",
    missing="–",
)
_COST_HEADERS = {
    "trainable_pct": "% params",
    "peak_mem_bytes": "Peak mem",
    "train_time_s": "Train time (s)",
    "tokens_per_s": "Tokens/s",
    "artifact_bytes": "Artifact",
}


def _headers(table: ComparisonTable, style: _Style) -> list[str]:
    names = ["Method", *(t.name for t in table.tasks), "Avg.", "Avg. rank"]
    return [style.escape(h) for h in names + [_COST_HEADERS[c] for c in COST_COLUMNS]]


def _rows(table: ComparisonTable, style: _Style) -> list[list[str]]:
    units = {c: _byte_unit(table.cost[c]) for c in COST_COLUMNS}
    rows = []
    for method in table.methods:
        row = [style.escape(method)]
        row += [_score_cell(table, method, task, style) for task in table.tasks]
        avg = _number(table.avg.get(method), table.tasks[0].scale, style)
        row.append(_mark(avg, method, table, "Avg.", style))
        rank = table.avg_rank.get(method)
        row.append(_mark(_fmt(rank, "{:.2f}", style), method, table, "Avg. rank", style))
        row += [_format_cost(c, table.cost.loc[method, c], units[c], style) for c in COST_COLUMNS]
        rows.append(row)
    return rows


def _score_cell(table: ComparisonTable, method: str, task: TaskInfo, style: _Style) -> str:
    if (method, task.name) not in table.cells.index:
        return style.missing
    cell = table.cells.loc[(method, task.name)]
    text = _number(cell["mean"], task.scale, style)
    if not math.isnan(cell["std"]):  # n = 1: no spread to show
        text += f" {style.pm} {_number(cell['std'], task.scale, style)}"
    text = _mark(text, method, table, task.name, style)
    return text + (style.dagger if method in table.tied.get(task.name, ()) else "")


def _mark(text: str, method: str, table: ComparisonTable, column: str, style: _Style) -> str:
    return style.bold(text) if method in table.best.get(column, ()) else text


def _number(value: float | None, scale: float, style: _Style) -> str:
    return _fmt(None if value is None else value * scale, "{:.1f}", style)


def _fmt(value: float | None, pattern: str, style: _Style) -> str:
    if value is None or math.isnan(value):
        return style.missing
    return pattern.format(value)


def _format_cost(column: str, value: float, unit: tuple[str, float], style: _Style) -> str:
    if math.isnan(value):
        return style.missing
    if column == "trainable_pct":
        return style.escape(_format_pct(value))
    if column.endswith("_bytes"):
        digits = 2 if unit[0] == "GB" else 1  # 0.85 GB, not 0.8 GB
        return f"{value / unit[1]:,.{digits}f} {unit[0]}"
    if column == "train_time_s":
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def _format_pct(value: float) -> str:
    """Two significant digits for small shares (0.0012, 0.33), fewer decimals for big ones."""
    if value >= 10:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.1f}"
    return f"{value:.2g}"


def _byte_unit(values: pd.Series) -> tuple[str, float]:
    """One decimal unit (1 MB = 10^6 bytes) per column, so its rows compare at a glance."""
    largest = values.max()
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if largest >= size:
            return unit, size
    return "B", 1.0


def _caption(table: ComparisonTable, prefix: str, style: _Style) -> str:
    e = style.escape
    ns = table.cells["n"]
    seeds = f"{ns.min()}" if ns.min() == ns.max() else f"{ns.min()}-{ns.max()}"
    scaled = [e(t.name) for t in table.tasks if t.scale != 1]
    if len(scaled) == len(table.tasks):
        scale_note = f" Scores {style.times}100 (the metrics lie in [0, 1])."
    elif scaled:
        scale_note = f" Scores of {', '.join(scaled)} {style.times}100 (metrics in [0, 1])."
    else:
        scale_note = ""
    metrics = "; ".join(
        f"{e(t.name)}: {e(t.metric)} ({e(t.split)}) {_arrow(t, style)}" for t in table.tasks
    )
    return (
        f"{prefix}PEFT methods on {e(table.model)}. Mean {style.pm} sample std over "
        f"seeds ({seeds} per cell; no {style.pm} with one seed).{scale_note} Metrics: {metrics}. "
        "Avg.: mean over the tasks a method has; Avg. rank: mean of per-task ranks (1 = best). "
        "Cost columns: means over tasks and seeds."
    )


def _arrow(task: TaskInfo, style: _Style) -> str:
    return style.up if task.higher_is_better else style.down


def _legend(table: ComparisonTable, style: _Style) -> str:
    avg_note = "" if table.avg_comparable else " Avg. omitted: tasks differ in scale or direction."
    if table.cells.index.get_level_values("method_label").value_counts().min() < len(table.tasks):
        avg_note += " Avg. and Avg. rank are marked best only among methods run on every task."
    return (
        f"{style.bold('Bold')}: best mean per column. {style.dagger}: {style.escape('95%')} "
        "bootstrap CI of the "
        f"mean overlaps the best method's CI (not separated by these seeds). {style.missing}: not "
        "run. Peak mem: accelerator allocated peak, or process RSS on CPU; "
        f"1 MB = 1,000,000 bytes.{avg_note}"
    )


def to_markdown(tables: list[ComparisonTable]) -> str:
    """Formats the tables as Markdown pipe tables, each with a caption and a legend line.

    Args:
        tables: Output of :func:`build_tables`.

    Returns:
        Markdown text, ready to paste into a README or a paper draft.
    """
    parts = []
    for number, table in enumerate(tables, start=1):
        headers = _headers(table, _MARKDOWN)
        lines = [_pipe_row(headers), _pipe_row([":--"] + ["--:"] * (len(headers) - 1))]
        lines += [_pipe_row(row) for row in _rows(table, _MARKDOWN)]
        caption = _caption(table, f"**Table {number}.** ", _MARKDOWN)
        parts.append(f"{caption}\n\n" + "\n".join(lines) + f"\n\n{_legend(table, _MARKDOWN)}\n")
    return "\n".join(parts)


def _pipe_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def to_html(tables: list[ComparisonTable]) -> str:
    """Formats the tables as HTML ``<table>`` elements (class ``comparison``) with captions.

    Args:
        tables: Output of :func:`build_tables`.

    Returns:
        An HTML fragment: one ``<figure>`` per table, the legend below it. Every text from
        a record is escaped.
    """
    parts = []
    for number, table in enumerate(tables, start=1):
        head = "".join(f"<th>{h}</th>" for h in _headers(table, _HTML))
        body = "\n".join(
            "<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
            for row in _rows(table, _HTML)
        )
        caption = _caption(table, f"<strong>Table {number}.</strong> ", _HTML)
        parts.append(
            f'<figure class="table">\n<figcaption>{caption}</figcaption>\n'
            f'<table class="comparison" data-model="{html.escape(table.model)}">\n'
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>\n"
            f'<p class="legend">{_legend(table, _HTML)}</p>\n</figure>'
        )
    return "\n".join(parts)


def to_latex(tables: list[ComparisonTable]) -> str:
    """Formats the tables as LaTeX ``table`` environments using booktabs rules.

    Args:
        tables: Output of :func:`build_tables`.

    Returns:
        LaTeX source; needs ``\\usepackage{booktabs}`` in the preamble.
    """
    parts = ["% Generated from run records by analysis.tables; needs \\usepackage{booktabs}.\n"]
    for table in tables:
        headers = _headers(table, _LATEX)
        body = [" & ".join(row) + r" \\" for row in _rows(table, _LATEX)]
        # LaTeX numbers the table itself, hence no "Table N" prefix.
        caption = f"{_caption(table, '', _LATEX)} {_legend(table, _LATEX)}"
        label = re.sub(r"[^A-Za-z0-9:-]+", "-", f"tab:comparison-{table.model}")
        parts.append("\n".join([
            r"\begin{table}[ht]", r"\centering", r"\small",
            rf"\caption{{{caption}}}", rf"\label{{{label}}}",
            rf"\begin{{tabular}}{{l{'r' * (len(headers) - 1)}}}", r"\toprule",
            " & ".join(headers) + r" \\", r"\midrule", *body, r"\bottomrule",
            r"\end{tabular}", r"\end{table}", "",
        ]))  # fmt: skip
    return "\n".join(parts)


def to_csv(tables: list[ComparisonTable]) -> str:
    """Formats the tables as one numeric CSV: one row per (model, method), no rounding.

    Scores are raw (not x100). Columns: model, method, then ``<task>/mean``, ``/std``,
    ``/n``, ``/ci_low``, ``/ci_high`` per task, then avg, avg_rank and the cost columns.

    Args:
        tables: Output of :func:`build_tables`.

    Returns:
        CSV text.
    """
    frames = []
    for table in tables:
        wide = table.cells.unstack("task")
        wide.columns = [f"{task}/{field}" for field, task in wide.columns]
        task_columns = [f"{t.name}/{f}" for t in table.tasks for f in SCORE_FIELDS]
        frame = wide[task_columns].assign(avg=table.avg, avg_rank=table.avg_rank)
        frame = frame.join(table.cost).loc[table.methods]
        frames.append(frame.rename_axis("method").reset_index().assign(model=table.model))
    out = pd.concat(frames, ignore_index=True)
    counts = [c for c in out.columns if c.endswith("/n")]
    out[counts] = out[counts].astype("Int64")  # unstacking made them float; seeds are counts
    first = ["model", "method"]
    return out[first + [c for c in out.columns if c not in first]].to_csv(index=False)
