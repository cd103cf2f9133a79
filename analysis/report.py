"""Records -> comparison tables, plots, a reproducibility section, a failure list and one
self-contained HTML page, all in one report directory."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

import analysis.clean_costs as clean_costs
import analysis.provenance as provenance
from analysis.collapse import COLLAPSED_FILE, collapsed_markdown
from analysis.comparisons import (
    plot_average_rank,
    plot_budget_matched,
    plot_critical_difference,
)
from analysis.convergence import TARGET_FRACTION, plot_convergence, write_time_to_target
from analysis.frame import REJECTED, SUCCESS, SYNTHETIC, load_records, quality_runs, select
from analysis.interactive import inline_scripts, render_charts, render_controls
from analysis.page import PAGE, Plot, render_page
from analysis.paired import load_predictions
from analysis.pairs import PAIRS_CSV, PAIRS_FILE, pair_tests, pairs_html, pairs_markdown
from analysis.plots import plot_all, plot_score_vs_train_size
from analysis.stats import aggregate
from analysis.tables import (
    DETECT,
    ComparisonTable,
    build_tables,
    to_csv,
    to_html,
    to_latex,
    to_markdown,
)
from peftbench.records.redact import scrub
from peftbench.records.store import process_alive

FAILURES_FILE = "failures.md"
REJECTED_FILE = "rejected.md"
REPRO_FILE = "reproducibility.md"
_UNCERTAINTY = (
    "Points: mean over seeds; bars: 95% interval of the mean (Student's t, BCa from 10 "
    "seeds; none for 1 seed). Dashed: Pareto frontier of the means; hollow: off the "
    "frontier, but its interval reaches it."
)
# Caption of each plot in the HTML page, by file stem (the page shows them in this order).
PLOT_CAPTIONS = {
    "score_vs_params": "Score vs % trainable parameters (log x). " + _UNCERTAINTY,
    "score_vs_memory": "Score vs peak memory. " + _UNCERTAINTY,
    "score_vs_time": "Score vs training time. " + _UNCERTAINTY,
    "score_vs_step": "Score vs the median training step of a clean cost run (each method "
    "alone on an idle machine). " + _UNCERTAINTY,
    "score_vs_train_memory": "Score vs training memory in a clean cost run (resident-set rise "
    "above the process before the method was built; on a GPU, the allocated peak). " + _UNCERTAINTY,
    "score_vs_train_size": "Score vs training examples (task.train_size; log x), a line per "
    "method. Points: mean over seeds; bars: 95% interval of the mean (Student's t, BCa from "
    "10 seeds; none for 1 seed), as in the table.",
    "score_vs_forgetting": "Score vs forgetting on a general text the tasks do not use: "
    "1 - linear CKA of the backbone's pooled features before vs after training, or, for a "
    "causal LM, the change in its per-token loss (nats). " + _UNCERTAINTY,
    "convergence": "Dev score vs optimizer step (top) and vs seconds (bottom); mean over "
    "seeds, band = range over seeds.",
    "average_rank": "Average rank over tasks (bars) and the rank on each task (markers).",
    "critical_difference": "Critical-difference diagram: average rank over the tasks the "
    "methods share (1 = best); a bar joins methods the Nemenyi post-hoc does not separate at "
    "95%; the test across tasks (Friedman, or the sign test for 2 methods) is in the title "
    "and under the table.",
    "budget_matched": "Score at matched trainable-parameter budgets (bars: 95% interval of "
    "the mean); dashed: methods run without a budget.",
}


def build_report(
    results_dir: Path,
    out_dir: Path | None = None,
    filters: dict[str, Any] | None = None,
    target_fraction: float = TARGET_FRACTION,
    reference: str | None = None,
    detect: float = DETECT,
    costs: list[Path] | None = None,
) -> list[Path]:
    """Builds the comparison report from the run records under ``results_dir``.

    Quality outputs use the latest successful record of each run_id and never runs on
    synthetic weights. Writes ``comparison.md``, ``comparison.csv``, ``comparison.tex``,
    ``score_vs_params.{png,svg}`` (plus ``score_vs_time``, ``score_vs_memory`` and
    ``score_vs_forgetting`` when those were recorded), ``convergence`` (when histories have
    dev points),
    ``time_to_target.{md,csv}`` (when full fine-tuning ran on a task), ``average_rank``,
    ``budget_matched`` (when runs carry budgets), ``score_vs_train_size`` (when runs of a task
    differ in ``task.train_size``), ``reproducibility.md``, ``report.html``
    (everything in one self-contained page), ``pairs.{md,csv}`` (every pair of methods
    tested, when runs stored predictions: ``analysis.pairs``) and, when some runs did not
    succeed, ``failures.md``. Every text output is scrubbed of secrets.

    Args:
        results_dir: Directory of run records (searched recursively).
        out_dir: Where to write; defaults to ``<results_dir>/report``.
        filters: Keyword arguments of ``records.select`` (task, model, method, sweep,
            where).
        target_fraction: Time to target: the share of full fine-tuning's best dev score.
        reference: A method label every method is also compared against (CSV columns
            ``<task>/*_vs_ref``, a differences table in ``comparison.md``).
        detect: The difference (displayed units) the power statement plans for.
        costs: Files of clean cost runs (``peftbench costs methods --out``): their step time
            and training memory replace the records' time and memory (``clean_costs``).

    Returns:
        The paths written.

    Raises:
        ValueError: If no successful run on real weights is left after filtering, the
            reference is not a method, or a predictions file was altered
            (``paired.PredictionsError``), or a cost file is unusable
            (``clean_costs.CostsFileError``).
    """
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir / "report"
    loaded = load_records(results_dir)
    rejected = loaded.attrs.get(REJECTED, [])
    records = select(loaded, **(filters or {}))
    runs = quality_runs(records)
    if runs.empty:
        raise ValueError(_nothing_to_report(results_dir, records, filters))
    if costs:
        runs = clean_costs.attach(runs, clean_costs.load(costs))
    out_dir.mkdir(parents=True, exist_ok=True)
    with staged(out_dir) as stage:  # all or nothing: the previous report stays till then
        written = _write_all(
            stage, records, runs, rejected, filters or {}, target_fraction,
            reference=reference, detect=detect,
        )  # fmt: skip
    # A failure, rejection or collapse list left by an earlier report would now be false.
    for name in (FAILURES_FILE, REJECTED_FILE, COLLAPSED_FILE, PAIRS_FILE, PAIRS_CSV):
        if name not in {p.name for p in written}:
            (out_dir / name).unlink(missing_ok=True)
    return [out_dir / p.relative_to(stage) for p in written]


def _write_all(
    out_dir: Path,
    records: pd.DataFrame,
    runs: pd.DataFrame,
    rejected: list[tuple[Path, str]],
    filters: dict[str, Any],
    target_fraction: float,
    *,
    reference: str | None,
    detect: float,
) -> list[Path]:
    agg = aggregate(runs)
    # Runs that stored per-example predictions are compared example by example (issue 33)
    predictions = load_predictions(runs)
    tables = build_tables(agg, predictions=predictions, reference=reference, detect=detect)
    pairs = pair_tests(agg, predictions)
    rows = provenance.repro_rows(runs)
    plots = [
        *plot_all(agg, out_dir),
        *plot_score_vs_train_size(runs, agg, out_dir),
        *plot_convergence(runs, agg, out_dir),
        *plot_average_rank(tables, agg, out_dir),
        *plot_critical_difference(tables, agg, out_dir),
        *plot_budget_matched(agg, out_dir),
    ]
    page = _page(tables, agg, plots, rows, runs, records, filters, rejected, pairs)
    written = [
        _write(out_dir / "comparison.md", to_markdown(tables)),
        _write(out_dir / "comparison.csv", to_csv(tables)),
        _write(out_dir / "comparison.tex", to_latex(tables)),
        *plots,
        *write_time_to_target(runs, out_dir, target_fraction),
        _write(out_dir / REPRO_FILE, provenance.to_markdown(rows)),
        _write_page(out_dir / PAGE, page),
    ]
    failures = records[records["status"] != SUCCESS]
    if not failures.empty:
        written.append(_write(out_dir / FAILURES_FILE, failures_markdown(failures, records)))
    if not pairs.empty:  # every pair of methods, not only each against its column's best
        written.append(_write(out_dir / PAIRS_FILE, pairs_markdown(pairs, agg)))
        written.append(_write(out_dir / PAIRS_CSV, pairs.to_csv(index=False)))
    collapsed = collapsed_markdown(runs)  # successes that learnt no more than a constant
    if collapsed is not None:
        written.append(_write(out_dir / COLLAPSED_FILE, collapsed))
    if rejected:
        written.append(_write(out_dir / REJECTED_FILE, rejected_markdown(rejected)))
    return written


STAGING_PREFIX = ".staging-"


@contextmanager
def staged(out_dir: Path) -> Iterator[Path]:
    """A hidden folder in ``out_dir`` to build the report in; its files replace the old ones
    (one ``os.replace`` each) only when every one is written.

    A full disk or a stop signal mid-build leaves the previous report as it was (a
    half-written report.html or a 0-byte PNG never replaces a good one) and no staging
    folder behind; one left by a process killed outright is removed by the next report.
    """
    for old in out_dir.glob(f"{STAGING_PREFIX}*"):
        pid = old.name.removeprefix(STAGING_PREFIX)
        if not pid.isdigit() or not process_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    stage = out_dir / f"{STAGING_PREFIX}{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
        for path in sorted(p for p in stage.rglob("*") if p.is_file()):
            target = out_dir / path.relative_to(stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)

    return True


def _write(path: Path, text: str) -> Path:
    path.write_text(scrub(text), encoding="utf-8")
    return path


def _write_page(path: Path, document: str) -> Path:
    """Scrubs the page, then inlines its scripts: fixed code, which scrubbing would corrupt."""
    path.write_text(inline_scripts(scrub(document)), encoding="utf-8")
    return path


def _page(
    tables: list[ComparisonTable],
    agg: pd.DataFrame,
    plots: list[Path],
    rows: list[provenance.ReproRow],
    runs: pd.DataFrame,
    records: pd.DataFrame,
    filters: dict[str, Any],
    rejected: list[tuple[Path, str]] = (),
    pairs: pd.DataFrame | None = None,
) -> str:
    pngs = {p.stem: p for p in plots if p.suffix == ".png"}
    embedded = [
        Plot(pngs[stem], caption) for stem, caption in PLOT_CAPTIONS.items() if stem in pngs
    ]
    failed = int((records["status"] != SUCCESS).sum())
    note = f"{len(runs)} runs (latest success per run id, real weights only) of {len(records)} "
    note += f"records; {failed} did not succeed (see {FAILURES_FILE})." if failed else "records."
    return render_page(
        title="peftbench: PEFT method comparison",
        table_html=to_html(tables),
        plots=embedded,
        repro_html=provenance.to_html(rows),
        notes=[note, *_rejected_notes(rejected), *_filter_notes(filters), *_metric_notes(runs)],
        controls_html=render_controls(agg, runs),
        charts_html=render_charts(agg, runs),
        pairs_html="" if pairs is None else pairs_html(pairs, agg),
    )


def _rejected_notes(rejected: list[tuple[Path, str]]) -> list[str]:
    if not rejected:
        return []
    return [f"{len(rejected)} files are not valid records and are left out (see {REJECTED_FILE})."]


def rejected_markdown(rejected: list[tuple[Path, str]]) -> str:
    """Lists the files skipped as not valid records, and why (the report never shows them)."""
    lines = [
        f"# Files that are not valid records ({len(rejected)})",
        "",
        "Left out of every table and plot. Fix or remove them; a run whose only success "
        "record is listed here runs again.",
        "",
        "| file | why |",
        "|:--|:--|",
    ]
    for path, reason in rejected:
        lines.append(f"| {path} | {_first_line(reason)} |")
    return "\n".join(lines) + "\n"


def _metric_notes(runs: pd.DataFrame) -> list[str]:
    """Names the Hub metrics (``task.metric_impl=evaluate``) that scored any primary value."""
    hub = sorted({str(v) for v in runs["metric_impl"].dropna() if not str(v).startswith("builtin")})
    return [f"Primary scores computed by evaluate: {'; '.join(hub)}."] if hub else []


def _filter_notes(filters: dict[str, Any]) -> list[str]:
    where = filters.get("where") or {}
    kept = [
        f"{k}={v if isinstance(v, str) else ','.join(v)}"
        for k, v in filters.items()
        if k != "where" and v is not None
    ]
    kept += [f"{k}={v}" for k, v in where.items()]
    return [f"Filtered to records with {', '.join(kept)}."] if kept else []


def _nothing_to_report(
    results_dir: Path, records: pd.DataFrame, filters: dict[str, Any] | None
) -> str:
    counts = records["status"].value_counts().sort_index()
    by_status = ", ".join(f"{status}={n}" for status, n in counts.items()) or "none"
    synthetic = int(((records["status"] == SUCCESS) & (records["weights"] == SYNTHETIC)).sum())
    note = f" ({synthetic} successes on synthetic weights do not count)" if synthetic else ""
    where = f"{results_dir}" + (f" with filters {filters}" if filters else "")
    return (
        f"no successful runs to report in {where}: {len(records)} records by status: "
        f"{by_status}{note}"
    )


def failures_markdown(failures: pd.DataFrame, records: pd.DataFrame) -> str:
    """Lists runs that did not succeed, with the first line of their error.

    Args:
        failures: Non-success rows of ``records``.
        records: All loaded records, to tell whether a later run of the same run_id succeeded.

    Returns:
        A Markdown table, oldest failure first.
    """
    lines = [
        f"# Runs that did not succeed ({len(failures)})",
        "",
        "| run_id | status | error | later success |",
        "|:--|:--|:--|:--|",
    ]
    for _, row in failures.sort_values(["created_at", "run_id"], na_position="first").iterrows():
        lines.append(
            f"| {row['run_id']} | {row['status']} | {_first_line(row['error'])} "
            f"| {'yes' if _succeeded_later(row, records) else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def _first_line(error: object) -> str:
    if not isinstance(error, str) or not error.strip():
        return "(no error message)"
    line = error.strip().splitlines()[0]
    line = line if len(line) <= 200 else line[:199] + "…"  # tracebacks can be one long line
    return line.replace("|", r"\|")


def _succeeded_later(failure: pd.Series, records: pd.DataFrame) -> bool:
    same = records[(records["run_id"] == failure["run_id"]) & (records["status"] == SUCCESS)]
    if pd.isna(failure["created_at"]):
        return not same.empty
    return bool((same["created_at"] > failure["created_at"]).any())
