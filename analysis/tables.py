"""The main comparison table (Delta-Tuning style): methods x tasks, Avg., Avg. rank, costs.

:func:`build_tables` computes everything a table shows (scores, best, ties, ranks, costs)
once; the writers only format it, so Markdown, CSV and LaTeX cannot disagree. A tie with
the best method (†) is a test of the difference, Holm-corrected over the comparisons of its
column, never overlapping intervals: where both methods stored per-example predictions, the
two-level bootstrap over seeds and test examples of ``analysis.paired``; else a test of the
seed scores, paired by seed only where the task's runs show a shared seed effect
(``paired.seed_effect``), Welch's t otherwise.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import pandas as pd

import analysis.clean_costs as clean_costs
from analysis.paired import (
    N_RESAMPLES,
    TEST_BOOTSTRAP,
    TEST_WELCH,
    MethodPredictions,
    Power,
    SeedEffect,
    column_power,
    column_tests,
    seed_effect,
    task_bootstrap,
)
from analysis.stats import (
    ALPHA,
    CI_BCA,
    CI_T,
    COST_COLUMNS,
    EXACT_MAX_BLOCKS,
    MEASURE_COLUMNS,
    N_PERMUTATIONS,
    NULL_ASYMPTOTIC,
    NULL_EXACT,
    NULL_PERMUTATION,
    RankTest,
    complete_blocks,
    rank_test,
)

SCORE_FIELDS = ("mean", "std", "n", "ci_low", "ci_high", "ci_method")
# Per task in the CSV, after TEST_FIELDS: runs collapsed to a constant prediction, the median.
COLLAPSE_FIELDS = ("n_collapsed", "median")
# Per task in the CSV, after SCORE_FIELDS: the paired test against the column's best method.
TEST_FIELDS = ("test_vs_best", "n_vs_best", "p_vs_best", "p_holm_vs_best")
# ... and, where a column was compared on per-example predictions, the difference from the
# best (method - best, raw units) with its 95% interval, and McNemar's p for accuracy.
DIFF_FIELDS = ("diff_vs_best", "diff_ci_low", "diff_ci_high")
MCNEMAR_FIELDS = ("mcnemar_vs_best", "mcnemar_p")
# With --reference METHOD: the same against that method (the ``reference`` column names it).
REF_FIELDS = (
    "test_vs_ref", "n_vs_ref", "p_vs_ref", "p_holm_vs_ref",
    "diff_vs_ref", "diff_ci_low_vs_ref", "diff_ci_high_vs_ref",
)  # fmt: skip
#: The difference a power statement plans for, in displayed units (1 point of accuracy x100).
DETECT = 1.0


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
    tied: dict[str, frozenset[str]]  # per task: not distinguishable from the best at 95%
    # per task: one row per other method, columns test, n, statistic, p, p_holm, reference
    tests: dict[str, pd.DataFrame]
    ci_methods: frozenset[str]  # interval methods used in the table's cells ("t", "bca")
    # Friedman (sign test for 2 methods) + Nemenyi over the tasks that the most methods
    # share; None when no 2 methods share 2 tasks.
    rank_test: RankTest | None
    # per task: the two-way ANOVA that decides whether seed-level tests pair by seed
    seed_effects: dict[str, SeedEffect] = field(default_factory=dict)
    # per task: what the seeds x test examples detect against the best (None: untested)
    power: dict[str, Power | None] = field(default_factory=dict)
    detect: float = DETECT  # the planned difference, displayed units
    n_resamples: int = N_RESAMPLES
    reference: str | None = None  # --reference METHOD
    # how the clean cost runs behind Step and Train mem kept methods apart ("one process",
    # "a fresh process per method and round"); empty without clean costs
    clean_isolation: tuple[str, ...] = ()
    clean_days: tuple[str, ...] = ()  # the days those cost runs were measured on
    ref_tests: dict[str, pd.DataFrame] = field(default_factory=dict)  # as ``tests``

    @property
    def avg_comparable(self) -> bool:
        """Whether averaging over tasks makes sense: same scale and direction everywhere."""
        return _comparable(self.tasks)


def _comparable(tasks: list[TaskInfo]) -> bool:
    return len({(t.scale, t.higher_is_better) for t in tasks}) == 1


def build_tables(
    agg: pd.DataFrame,
    *,
    predictions: Mapping[tuple[str, str, str], MethodPredictions] | None = None,
    reference: str | None = None,
    n_resamples: int = N_RESAMPLES,
    detect: float = DETECT,
) -> list[ComparisonTable]:
    """Builds one comparison table per model from seed aggregates.

    Args:
        agg: Output of ``stats.aggregate`` (quality runs only).
        predictions: ``paired.load_predictions`` of the runs: per (task, model,
            method_label), the test predictions of its seeds. Comparisons where both
            methods have them are example-level.
        reference: A method label to compare every method against (``--reference``).
        n_resamples: Bootstrap resamples of the example-level comparisons.
        detect: The difference the power statement plans for, in displayed units.

    Returns:
        Tables sorted by model name; methods and tasks are sorted by name for stable output.

    Raises:
        ValueError: ``reference`` names no method of any table.
    """
    if reference is not None and reference not in set(agg["method_label"]):
        from peftbench.errors import closest

        hint = closest(reference, sorted(set(agg["method_label"])))
        raise ValueError(
            f"--reference {reference!r} is not a method of the report"
            + (f"; did you mean {hint!r}?" if hint else "; see the methods with --method")
        )
    tasks = task_infos(agg)
    options = {"predictions": predictions or {}, "reference": reference,
               "n_resamples": n_resamples, "detect": detect}  # fmt: skip
    return [
        _build_one(model, group, tasks, **options)
        for model, group in agg.groupby("model", sort=True)
    ]


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


def _build_one(
    model: str,
    agg: pd.DataFrame,
    infos: dict[str, TaskInfo],
    *,
    predictions: Mapping[tuple[str, str, str], MethodPredictions],
    reference: str | None,
    n_resamples: int,
    detect: float,
) -> ComparisonTable:
    tasks = [infos[t] for t in sorted(agg["task"].unique())]
    indexed = agg.set_index(["method_label", "task"])
    cells = indexed[[*SCORE_FIELDS, *(f for f in COLLAPSE_FIELDS if f in indexed)]]
    means = cells["mean"].unstack("task")
    best, tied, ranks, tests = {}, {}, {}, {}
    effects, powers, ref_tests = {}, {}, {}
    used_resamples = n_resamples
    for task in tasks:
        column = means[task.name].dropna()
        ranks[task.name] = column.rank(ascending=not task.higher_is_better, method="average")
        best[task.name] = frozenset(column[ranks[task.name] == ranks[task.name].min()].index)
        seeds = indexed["seed_values"].xs(task.name, level="task").to_dict()
        preds = {m: p for (t, mo, m), p in predictions.items() if t == task.name and mo == model}
        effects[task.name] = effect = seed_effect(seeds)
        # enough resamples that the smallest bootstrap p, 2 / (B + 1), survives Holm's
        # factor (the number of comparisons) below ALPHA
        resamples = max(n_resamples, math.ceil(2.5 * len(seeds) / ALPHA))
        used_resamples = max(used_resamples, resamples)
        boot = task_bootstrap(task.name, task.metric, preds, n_resamples=resamples)
        options = {"task": task.name, "metric": task.metric, "predictions": preds,
                   "effect": effect, "n_resamples": resamples, "boot": boot}  # fmt: skip
        tests[task.name] = tested = tests_vs_best(seeds, best[task.name], **options)
        tied[task.name] = frozenset(tested.index[tested["p_holm"] >= ALPHA])
        powers[task.name] = column_power(tested, detect / task.scale)
        if reference is not None and reference in seeds:
            others = [m for m in seeds if m != reference]
            ref_tests[task.name] = column_tests(seeds, reference, others, **options)
    ranks = pd.DataFrame(ranks)
    avg_rank = ranks.mean(axis=1)
    oriented = pd.DataFrame(
        {t.name: means[t.name] * (1 if t.higher_is_better else -1) for t in tasks}
    )
    blocks = complete_blocks(oriented)
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
        cost=_costs(agg),
        best=best,
        tied=tied,
        tests=tests,
        ci_methods=frozenset(agg["ci_method"]) & {CI_T, CI_BCA},
        rank_test=None if blocks.empty else rank_test(blocks),
        seed_effects=effects,
        power=powers,
        detect=detect,
        n_resamples=used_resamples,
        reference=reference,
        ref_tests=ref_tests,
        clean_isolation=_distinct(agg, clean_costs.ISOLATION),
        clean_days=_distinct(agg, clean_costs.MEASURED_ON),
    )


def _distinct(agg: pd.DataFrame, column: str) -> tuple[str, ...]:
    return tuple(sorted(set(agg.get(column, pd.Series()).dropna())))


def _costs(agg: pd.DataFrame) -> pd.DataFrame:
    """Per method, the mean over tasks of the seed means: COST_COLUMNS, then MEASURE_COLUMNS
    and ``forgetting_measure``. Forgetting is averaged only over tasks of one measure (a
    decoder's LM-loss delta and its classification runs' CKA drift do not add up): a method
    whose tasks mix measures gets NaN and ``mixed``."""
    by_method = agg.groupby("method_label")
    cost = by_method[list(COST_COLUMNS)].mean()
    for column in MEASURE_COLUMNS:
        cost[column] = by_method[column].mean() if column in agg else math.nan
    if "forgetting_measure" not in agg:
        cost["forgetting_measure"] = None
        return cost
    measures = by_method["forgetting_measure"].agg(lambda m: sorted(set(m.dropna())))
    cost["forgetting_measure"] = measures.map(
        lambda m: m[0] if len(m) == 1 else ("mixed" if m else None)
    )
    cost.loc[measures.map(len) > 1, "forgetting"] = math.nan
    return cost


def tests_vs_best(
    seed_values: Mapping[str, Mapping[int, float]] | pd.Series,
    best: frozenset[str],
    **options: object,
) -> pd.DataFrame:
    """Every method against the best one of a column, Holm-corrected (``paired.column_tests``).

    The reference is the best method (the first by name when several share the best mean;
    the others are bold as well and not tested).

    Args:
        seed_values: Per method label, its dict seed -> score on this task.
        best: The best methods of the column.
        **options: ``paired.column_tests``' keywords (task, metric, predictions, effect,
            n_resamples).

    Returns:
        One row per non-best method, columns ``paired.TEST_COLUMNS``.
    """
    seed_values = dict(seed_values)
    if not best:
        return pd.DataFrame(columns=["reference", "test", "n", "statistic", "p", "p_holm"])
    reference = sorted(best)[0]
    others = [m for m in seed_values if m not in best]
    return column_tests(seed_values, reference, others, **options)


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
    geq: str
    chi2: str


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
    geq="≥",
    chi2="χ²",
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
    geq=r"$\geq$",
    chi2=r"$\chi^2$",
)
_HTML = replace(  # the Markdown symbols are Unicode, as HTML takes them
    _MARKDOWN, escape=html.escape, bold=lambda s: f"<strong>{s}</strong>"
)
_COST_HEADERS = {
    "trainable_pct": "% params",
    "stored_pct": "% stored",
    "peak_mem_bytes": "Peak mem",
    "train_time_s": "Train time (s)",
    "tokens_per_s": "Tokens/s",
    "artifact_bytes": "Artifact",
    "forgetting": "Forgetting",
    "energy_j": "Energy (J)",
    "step_ms_clean": "Step (ms)",
    "train_mem_clean_bytes": "Train mem",
    "forward_ms_clean": "Forward (ms)",
}
#: Measures shown after the costs where a record of the table has them (older records and
#: CPUs without RAPL have none: no empty column); a clean cost run's columns replace the
#: records' time and memory (``analysis.clean_costs``).
_SHOWN_MEASURES = (
    "step_ms_clean", "train_mem_clean_bytes", "forward_ms_clean", "forgetting", "energy_j"
)  # fmt: skip


def _columns(table: ComparisonTable) -> list[str]:
    shown = [c for c in _SHOWN_MEASURES if c in table.cost and table.cost[c].notna().any()]
    replaced = clean_costs.hidden(shown)
    columns = [c for c in COST_COLUMNS if c not in replaced]
    if _stored_differs(table):  # right after "% params", which it qualifies
        columns.insert(columns.index("trainable_pct") + 1, "stored_pct")
    return [*columns, *shown]


def _stored_differs(table: ComparisonTable) -> bool:
    """Whether a method keeps fewer parameters than it trains (a prompt reparametrisation,
    ``params.stored``): only then is "% stored" a column of its own."""
    if "stored_pct" not in table.cost:
        return False
    stored, trainable = table.cost["stored_pct"], table.cost["trainable_pct"]
    return bool(((trainable - stored).abs() > 1e-3 * trainable.abs()).any())  # NaN: False


def _headers(table: ComparisonTable, style: _Style) -> list[str]:
    names = ["Method", *(t.name for t in table.tasks), "Avg.", "Avg. rank"]
    return [style.escape(h) for h in names + [_COST_HEADERS[c] for c in _columns(table)]]


def _rows(table: ComparisonTable, style: _Style) -> list[list[str]]:
    columns = _columns(table)
    units = {c: _byte_unit(table.cost[c]) for c in columns}
    rows = []
    for method in table.methods:
        row = [style.escape(method)]
        row += [_score_cell(table, method, task, style) for task in table.tasks]
        avg = _number(table.avg.get(method), table.tasks[0].scale, style)
        row.append(_mark(avg, method, table, "Avg.", style))
        rank = table.avg_rank.get(method)
        row.append(_mark(_fmt(rank, "{:.2f}", style), method, table, "Avg. rank", style))
        row += [_format_cost(c, table.cost.loc[method, c], units[c], style) for c in columns]
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
    text += style.dagger if method in table.tied.get(task.name, ()) else ""
    if cell["n"] == 1 and table.cells["n"].max() > 1:  # in a 1-seed table the caption says it
        text += " (1 seed)"
    collapsed = int(cell.get("n_collapsed", 0) or 0)
    if collapsed:  # the mean counts the collapsed seeds (issue 33): the median beside it
        median = _number(cell["median"], task.scale, style)
        text += f" (median {median}; {collapsed} of {int(cell['n'])} collapsed)"
    return text


def _mark(text: str, method: str, table: ComparisonTable, column: str, style: _Style) -> str:
    return style.bold(text) if method in table.best.get(column, ()) else text


def _number(value: float | None, scale: float, style: _Style) -> str:
    # + 0.0 after rounding: a difference of -1e-17 (float noise) shows as 0.0, not -0.0
    return _fmt(None if value is None else round(value * scale, 1) + 0.0, "{:.1f}", style)


def _fmt(value: float | None, pattern: str, style: _Style) -> str:
    if value is None or math.isnan(value):
        return style.missing
    return pattern.format(value)


def _format_cost(column: str, value: float, unit: tuple[str, float], style: _Style) -> str:
    if value is None or math.isnan(value):
        return style.missing
    if column == "forgetting":
        return f"{value:.3g}"
    if column in ("trainable_pct", "stored_pct"):
        return style.escape(_format_pct(value))
    if column.endswith("_bytes"):
        digits = 2 if unit[0] == "GB" else 1  # 0.85 GB, not 0.8 GB
        return f"{value / unit[1]:,.{digits}f} {unit[0]}"
    if column in ("train_time_s", "energy_j") or (
        column in ("step_ms_clean", "forward_ms_clean") and value < 100
    ):
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
        f"{prefix}PEFT methods on {e(table.model)}. {_seed_note(table, style)}{scale_note} "
        f"Metrics: {metrics}. "
        "Avg.: mean over the tasks a method has; Avg. rank: mean of per-task ranks (1 = best). "
        f"Cost columns: means over tasks and seeds.{e(_measure_note(table))}"
    )


#: What a forgetting value is, by the record's ``forgetting.measure`` (docs/MEASUREMENT.md).
_FORGETTING_MEANING = {
    "linear_cka_drift": "1 - linear CKA of the backbone's pooled features on 64 general "
    "verses, before vs after training (0 = unchanged)",
    "lm_loss_delta": "LM loss on 64 general verses after minus before, in nats (positive = forgot)",
}


def _measure_note(table: ComparisonTable) -> str:
    columns = _columns(table)
    notes = []
    if "stored_pct" in columns:
        notes.append(
            " % stored: what the trained method keeps, where it trains more than that: a "
            "prompt reparametrisation (a prefix MLP, P-tuning's encoder) counted as the prompt "
            "it produces."
        )
    if "forgetting" in columns:
        measures = sorted({m for m in table.cost["forgetting_measure"].dropna() if m != "mixed"})
        meaning = "; ".join(_FORGETTING_MEANING.get(m, m) for m in measures)
        notes.append(f" Forgetting: {meaning}; lower is better.")
    if "energy_j" in columns:
        notes.append(" Energy: training energy per run (NVML on GPUs, RAPL on CPUs).")
    if "step_ms_clean" in columns:
        isolation = " or ".join(table.clean_isolation) or "one process"
        notes.append(
            " Step and Train mem: from a clean cost run per task (`peftbench costs methods`: "
            f"every method alone in turn, {isolation}, on an idle machine, medians over "
            "interleaved rounds), not from the training runs, which shared the machine; Step: "
            "the median training step; Train mem: the resident-set rise during training above "
            "what the process held before the method was built (on a GPU, the allocated peak)."
            + _days_note(table.clean_days)
        )
    if "forward_ms_clean" in columns:
        notes.append(
            " Forward: one training batch through the trained model in eval mode, no "
            "gradients, from the same clean cost run; merged where the method folds into the "
            "weights, as it would be served."
        )
    return "".join(notes)


def _days_note(days: tuple[str, ...]) -> str:
    """Cost files of several days: their absolute times hold for their day only."""
    if len(days) < 2:
        return ""
    return (
        f" The cost files were measured on {len(days)} days ({', '.join(days)}); a shared "
        "machine's pace moves between days (the same cost run: up to 2.3x as long a step), "
        "so a Step compares methods, each averaged over the same files, not sittings."
    )


def _span(values: pd.Series) -> str:
    low, high = int(values.min()), int(values.max())
    return f"{low}" if low == high else f"{low}–{high}"


def _seed_note(table: ComparisonTable, style: _Style) -> str:
    ns = table.cells["n"]
    if ns.max() == 1:
        return "1 seed: no uncertainty estimate (no interval, no test)."
    note = f"Mean {style.pm} sample std over seeds ({_span(ns)} per cell"
    note += "; 1 seed: no uncertainty estimate)." if ns.min() == 1 else ")."
    intervals = []
    if CI_T in table.ci_methods:
        intervals.append("Student's t")
    if CI_BCA in table.ci_methods:
        intervals.append("BCa bootstrap (10,000 resamples, 10 or more seeds)")
    return f"{note} {style.escape('95%')} intervals of the mean (CSV): {' and '.join(intervals)}."


def _test_note(table: ComparisonTable, style: _Style) -> str:
    """Which tests decided the † marks, over how many seeds (and examples), and why."""
    frames = [f for f in table.tests.values() if not f.empty]
    tested = pd.concat(frames) if frames else pd.DataFrame(columns=["test", "n"])
    tested = tested[tested["test"] != ""]
    if tested.empty:
        return (
            f"{style.dagger}: not distinguishable from the best at {style.escape('95%')}; no "
            "method shares 2 or more seeds with the best one, so none was tested."
        )
    tests = " or ".join(
        _test_name(name, group, table, style) for name, group in tested.groupby("test", sort=True)
    )
    untested = (
        " Not tested (no mark): fewer than 2 seeds shared with the best."
        if len(tested) < sum(len(f) for f in frames)
        else ""
    )
    return (
        f"{style.dagger}: not distinguishable from the best at {style.escape('95%')}: two-sided "
        f"{tests}, Holm-corrected over the comparisons in the column (adjusted p "
        f"{style.geq} 0.05).{_pairing_note(table, tested, style)}{untested}"
    )


def _test_name(name: str, group: pd.DataFrame, table: ComparisonTable, style: _Style) -> str:
    e = style.escape
    if name == TEST_BOOTSTRAP:
        return (
            f"paired bootstrap over seeds {style.times} test examples (n = {_span(group['n'])} "
            f"seeds, {_span(group['n_examples'])} examples, {table.n_resamples:,} resamples; "
            "the same examples for both methods, the corpus metric recomputed per resample; "
            f"Owen's pigeonhole scheme for crossed factors) on stored predictions"
        )
    over = "over seeds" if name == TEST_WELCH else "over the seeds shared with the best method"
    return f"{e(name)} (n = {_span(group['n'])}) {over}"


def _pairing_note(table: ComparisonTable, tested: pd.DataFrame, style: _Style) -> str:
    """Why seeds were or were not paired: the two-way ANOVA's seed effect per task."""
    effects = {t: e for t, e in table.seed_effects.items() if not math.isnan(e.p)}
    if not effects:
        return ""
    shown = ", ".join(f"{style.escape(t)} p = {e.p:.2g}" for t, e in sorted(effects.items()))
    return (
        f" Seeds paired only where a two-way ANOVA (method {style.times} seed) finds a seed "
        f"effect shared by the methods (p < 0.25): {shown}."
    )


def _power_note(table: ComparisonTable, style: _Style) -> str:
    """What the present seeds x test examples can detect against the best, per task."""
    parts = []
    for task in table.tasks:
        power = table.power.get(task.name)
        if power is None:
            continue
        size = f"{power.n_seeds} seeds"
        options = [_option(power.seeds_needed, "seeds per method", power.n_examples, "examples")]
        if power.n_examples:
            size += f" {style.times} {power.n_examples:,} test examples"
            options.append(_option(power.examples_needed, "test examples", power.n_seeds, "seeds"))
        parts.append(
            f"{style.escape(task.name)}: {size} detect {_number(power.mdd, task.scale, style)}"
            f"; {table.detect:g}: {', or '.join(options)}"
        )
    if not parts:
        return ""
    seed_only = any(p is not None and not p.n_examples for p in table.power.values())
    caveat = " (without predictions: seed variance only; test sampling is not counted)"
    return (
        f" Power ({style.escape('80%')} at {style.escape('95%')}, from the observed "
        "variances, median over the comparisons with the best): the smallest difference from "
        f"the best that the present design detects, and what a chosen one needs: "
        f"{'. '.join(parts)}{caveat if seed_only else ''}."
    )


def _option(needed: float, unit: str, held: int | None, held_unit: str) -> str:
    """One way to reach the planned difference, or that this way cannot (infinite need: the
    variance of what is held fixed already exceeds the difference's budget)."""
    at = f" at {held:,} {held_unit}" if held else ""
    if math.isinf(needed):
        return f"out of reach with more {unit.split(' per ')[0]} alone{at}"
    return f"{needed:,.0f} {unit}{at}"


def rank_test_note(test: RankTest | None, style: _Style | None = None) -> str:
    """One sentence on the test across tasks behind the ranks (empty when there is none).

    Args:
        test: The table's rank test.
        style: Output format (default Markdown).

    Returns:
        Text ending in a space, or "".
    """
    style = style or _MARKDOWN
    if test is None:
        return ""
    e = style.escape
    if test.test == "sign test":
        a, b = (e(m) for m in test.scores.columns)
        omnibus = (
            f"two-sided sign test over the {test.n_blocks} tasks both share ({a} better on "
            f"{test.statistic:.0f}), p = {test.p:.3g}"
        )
    else:
        omnibus = (
            f"Friedman test over the {test.n_blocks} tasks that {test.k} methods all share, "
            f"{style.chi2}({test.k - 1}) = {test.statistic:.3g}, p = {test.p:.3g}"
        )
    return (
        f"Across tasks: {omnibus}; Nemenyi post-hoc, critical difference of average ranks "
        f"CD = {test.cd:.2f} at {e('95%')} (diagram: {e('critical_difference.png')}); "
        f"{_NULL_NOTE[test.null]}. "
    )


#: Where the p and CD of the test across tasks come from, by ``RankTest.null``.
_NULL_NOTE = {
    NULL_EXACT: "p and CD exact, from every arrangement of the ranks",
    NULL_PERMUTATION: f"p and CD from {N_PERMUTATIONS:,} random rank permutations "
    f"(up to {EXACT_MAX_BLOCKS} tasks; the asymptotic values are conservative there)",
    NULL_ASYMPTOTIC: "p and CD asymptotic (chi-square, studentized range)",
}


def _arrow(task: TaskInfo, style: _Style) -> str:
    return style.up if task.higher_is_better else style.down


def _legend(table: ComparisonTable, style: _Style) -> str:
    avg_note = "" if table.avg_comparable else " Avg. omitted: tasks differ in scale or direction."
    if table.cells.index.get_level_values("method_label").value_counts().min() < len(table.tasks):
        avg_note += " Avg. and Avg. rank are marked best only among methods run on every task."
    if "n_collapsed" in table.cells and table.cells["n_collapsed"].fillna(0).gt(0).any():
        avg_note += (
            " Collapsed: runs whose dev predictions were one class throughout or never beat a "
            "constant prediction; the mean counts them, the median is shown beside it "
            "(collapsed.md lists them)."
        )
    peak = "peak_mem_bytes" in _columns(table)  # a clean cost run's Train mem replaces it
    memory = " Peak mem: accelerator allocated peak, or process RSS on CPU;" if peak else ""
    return (
        f"{style.bold('Bold')}: best mean per column. {_test_note(table, style)}"
        f"{_power_note(table, style)} "
        f"{rank_test_note(table.rank_test, style)}{style.missing}: not run.{memory} "
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
        if _example_level(table, best_only=True):
            parts.append(_differences_markdown(table, table.tests, "the best"))
        if table.reference is not None and table.ref_tests:
            parts.append(_differences_markdown(table, table.ref_tests, table.reference))
    return "\n".join(parts)


def _differences_markdown(table: ComparisonTable, tests: dict, against: str | None) -> str:
    """Method - reference per task with its 95% interval and test (the CSV's diff columns)."""
    tasks = [t for t in table.tasks if t.name in tests and not tests[t.name].empty]
    lines = [_pipe_row(["Method", *(_MARKDOWN.escape(t.name) for t in tasks)]),
             _pipe_row([":--"] + ["--:"] * len(tasks))]  # fmt: skip
    for method in table.methods:
        cells = []
        for task in tasks:
            frame = tests[task.name]
            row = frame.loc[method] if method in frame.index else None
            if row is None or row["test"] == "":
                cells.append(_MARKDOWN.missing)
                continue
            diff, low, high = (_number(row[k], task.scale, _MARKDOWN) for k in
                               ("diff", "ci_low", "ci_high"))  # fmt: skip
            short = "boot" if row["test"] == TEST_BOOTSTRAP else row["test"]
            cells.append(f"{diff} [{low}, {high}] p={row['p_holm']:.2g} ({short})")
        lines.append(_pipe_row([_MARKDOWN.escape(method), *cells]))
    return (
        f"Differences from {_MARKDOWN.escape(str(against))} (method {chr(8722)} it, display "
        "units, 95% interval; Holm-adjusted p; boot: the paired bootstrap over seeds "
        f"{_MARKDOWN.times} test examples):\n\n"
        + "\n".join(lines)
        + "\n"
        + _width_note(tasks, tests)
    )


def _width_note(tasks: list[TaskInfo], tests: dict) -> str:
    """Median width of the example-level intervals next to the seed-level ones per task."""
    parts = []
    for task in tasks:
        frame = tests[task.name]
        boot = frame[frame["test"] == TEST_BOOTSTRAP]
        if boot.empty:
            continue
        example = ((boot["ci_high"] - boot["ci_low"]) * task.scale).median()
        seeds = ((boot["seed_ci_high"] - boot["seed_ci_low"]) * task.scale).median()
        name = _MARKDOWN.escape(task.name)
        parts.append(f"{name} {example:.1f} (seed scores alone: {seeds:.1f})")
    if not parts:
        return ""
    return (
        "\nMedian width of the bootstrap intervals over seeds and test examples, next to the "
        "seed-level test's interval of the same differences (which treats the test set as "
        f"fixed): {'; '.join(parts)}.\n"
    )


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

    Scores are raw (not x100). Columns: model, method, then per task ``<task>/mean``,
    ``/std``, ``/n``, ``/ci_low``, ``/ci_high`` (95% interval of the mean, empty for one
    seed), ``/ci_method`` (t or bca), ``/test_vs_best``, ``/n_vs_best``, ``/p_vs_best`` and
    ``/p_holm_vs_best`` (the test against the column's best method, named in
    ``test_vs_best``; empty for the best and the untested); where a table compared some
    methods on per-example predictions, also ``/diff_vs_best``, ``/diff_ci_low`` and
    ``/diff_ci_high`` (method - best, raw units, with its 95% interval) and, for accuracy,
    ``/mcnemar_vs_best`` and ``/mcnemar_p``; with ``--reference``, a ``reference`` column
    and per task the same against it (:data:`REF_FIELDS`). Then avg, avg_rank, the cost
    columns, ``forgetting`` (mean over the tasks of the record's ``forgetting.value``: 1 -
    linear CKA or the LM-loss delta, named by ``forgetting_measure``; empty where a
    method's tasks mix the two), ``energy_j`` and ``energy_j_per_token`` (training energy,
    empty where no counter was readable).

    Args:
        tables: Output of :func:`build_tables`.

    Returns:
        CSV text.
    """
    frames = []
    for table in tables:
        wide = table.cells.join(_test_columns(table)).unstack("task")
        wide.columns = [f"{task}/{field}" for field, task in wide.columns]
        collapse = tuple(f for f in COLLAPSE_FIELDS if f in table.cells)
        fields = SCORE_FIELDS + TEST_FIELDS + collapse + _extra_fields(table)
        task_columns = [f"{t.name}/{f}" for t in table.tasks for f in fields]
        frame = wide[task_columns].assign(avg=table.avg, avg_rank=table.avg_rank)
        frame = frame.join(table.cost).loc[table.methods]
        frame = frame.rename_axis("method").reset_index().assign(model=table.model)
        if table.reference is not None:
            frame.insert(0, "reference", table.reference)
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    counts = [
        c for c in out.columns if c.endswith(("/n", "/n_vs_best", "/n_collapsed", "/n_vs_ref"))
    ]
    out[counts] = out[counts].astype("Int64")  # unstacking made them float; seeds are counts
    first = ["model", "method"] + (["reference"] if "reference" in out else [])
    return out[first + [c for c in out.columns if c not in first]].to_csv(index=False)


def _example_level(table: ComparisonTable, *, best_only: bool = False) -> bool:
    """Whether any comparison of the table (against the best only) used predictions."""
    frames = [*table.tests.values(), *([] if best_only else table.ref_tests.values())]
    return any((f["test"] == TEST_BOOTSTRAP).any() for f in frames if "test" in f)


def _extra_fields(table: ComparisonTable) -> tuple[str, ...]:
    fields: tuple[str, ...] = ()
    if _example_level(table):
        fields += DIFF_FIELDS
        mcnemar = [f["mcnemar_test"] for f in table.tests.values() if "mcnemar_test" in f]
        if any((m != "").any() for m in mcnemar):
            fields += MCNEMAR_FIELDS
    if table.reference is not None:
        fields += REF_FIELDS
    return fields


def _test_columns(table: ComparisonTable) -> pd.DataFrame:
    """The per-task test fields per (method_label, task), aligned with ``table.cells``."""
    rows = []
    for method, task in table.cells.index:
        row = {"method_label": method, "task": task}
        row |= _test_fields(table.tests.get(task), method, "best")
        if table.reference is not None:
            row |= _test_fields(table.ref_tests.get(task), method, "ref")
        rows.append(row)
    return pd.DataFrame(rows).set_index(["method_label", "task"])


def _test_fields(tests: pd.DataFrame | None, method: str, against: str) -> dict[str, object]:
    row = tests.loc[method] if tests is not None and method in tests.index else None
    has = row is not None and row["test"] != ""
    value = lambda key: row[key] if has and key in row else math.nan  # noqa: E731
    fields = {
        f"test_vs_{against}": row["test"] if has else "",
        f"n_vs_{against}": row["n"] if has else pd.NA,
        f"p_vs_{against}": value("p"),
        f"p_holm_vs_{against}": value("p_holm"),
    }
    if against == "best":
        fields |= {"diff_vs_best": value("diff"), "diff_ci_low": value("ci_low"),
                   "diff_ci_high": value("ci_high"),
                   "mcnemar_vs_best": row["mcnemar_test"] if has and "mcnemar_test" in row else "",
                   "mcnemar_p": value("mcnemar_p")}  # fmt: skip
    else:
        fields |= {"diff_vs_ref": value("diff"), "diff_ci_low_vs_ref": value("ci_low"),
                   "diff_ci_high_vs_ref": value("ci_high")}  # fmt: skip
    return fields
