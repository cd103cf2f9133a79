"""Where a benchmark folder stands (``peftbench benchmark status``): per task, what each stage
has done and has left, the compute spent, and the compute left at the folder's own pace.

A benchmark of five tasks runs in chunks over days (docs/benchmarks/README.md). This counts
from the records, so nobody sums wall times by hand. The estimate prices a run left at the
mean wall time of its method's recorded runs on the task (grid and final runs train the same
steps), else at the task's mean over methods, and divides by the runs trained at once. A task
with no record has no pace, and one whose step budget doubles trains its grid again: both say
so instead of guessing. One model per folder, as the benchmark script lays them out (the
SmolLM2-135M subset has its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftbench.launch import protocol

#: What a final run's record may say and still count as done: anything but a run stopped
#: part-way, which the same command resumes.
_UNFINISHED = ("interrupted", "cancelled")


@dataclass
class TaskProgress:
    """One task of a benchmark folder: runs done and expected per stage, in grid points (a
    scale on every selection seed) and final runs (a chosen recipe on one final seed)."""

    task: str
    grid_done: int
    grid_total: int  # methods x the grid's scales (+ the extension points added)
    to_extend: int  # points ``extend`` would add now (a lower bound while the grid runs)
    grid_complete: bool
    improving: tuple[int, int]  # chosen runs whose best dev step was their last, of chosen
    finals_done: int
    finals_total: int
    costs_measured: bool
    spent_s: float  # wall time of the task's records, divided by the runs at once
    left_s: float | None  # None: no pace yet, or the budget doubles
    runs_at_once: int

    @property
    def doubles(self) -> bool:
        """The protocol's step-budget rule, decided once every cell has its grid."""
        last, chosen = self.improving
        return self.grid_complete and 2 * last > chosen

    @property
    def why_no_estimate(self) -> str | None:
        if self.doubles:
            return "the step budget doubles: the grid trains again"
        if self.left_s is None:
            return "no run yet to measure a pace"
        return None


@dataclass
class _Folder:
    """A benchmark folder read once: ``status`` covers every task from one reading (each
    task reading it again made the command take minutes beside running benchmark jobs)."""

    cells: list[protocol.Cell]  # every task's, from the grid's selection-seed records
    grid: Any  # pandas frames of the grid's and the finals' records (None: no folder)
    final: Any


def _read(results: Path, scales: Sequence[float], selection_seeds: Sequence[int]) -> _Folder:
    grid_dir = results / "grid"
    cells = (
        protocol.select_cells(grid_dir, scales, selection_seeds)
        if (grid_dir / "records").is_dir()
        else []
    )
    return _Folder(cells, _load(grid_dir), _load(results / "final"))


def _load(folder: Path):
    from analysis.frame import load_records  # lazy: pandas

    return load_records(folder / "records") if (folder / "records").is_dir() else None


def _runs(df, task: str, seeds: Sequence[int]):
    """The task's records of ``seeds``, the newest per run id (None: no records folder)."""
    if df is None:
        return None
    df = df[(df["task"] == task) & df["seed"].isin(list(seeds)) & (df["weights"] != "synthetic")]
    return df.sort_values(["created_at", "path"], kind="stable").drop_duplicates(
        "run_id", keep="last"
    )


def _pace(runs) -> tuple[dict[str, float], float | None]:
    """Mean wall seconds per run: per method, and over the task (None: no run has one)."""
    done = [r for r in runs if r is not None and not r.empty]
    if not done:
        return {}, None
    import pandas as pd

    walls = pd.concat(done)[["method", "wall_s"]].dropna()
    walls = walls[walls["wall_s"] > 0]
    if walls.empty:
        return {}, None
    return walls.groupby("method")["wall_s"].mean().to_dict(), float(walls["wall_s"].mean())


def task_progress(
    results: Path, task: str, *, methods: Sequence[str], seeds: Sequence[int],
    selection_seeds: Sequence[int] = protocol.SELECTION_SEEDS,
    scales: Sequence[float] | None = None, runs_at_once: int = 2, folder: _Folder | None = None,
) -> TaskProgress:  # fmt: skip
    """What the grid, the extension and the finals of ``task`` have done and have left
    (``folder``: ``results`` already read with the same scales and selection seeds)."""
    grid_dir = results / "grid"
    base = protocol.preset_scales() if scales is None else [float(s) for s in scales]
    folder = folder or _read(results, base, selection_seeds)
    cells = [c for c in folder.cells if c.task == task and c.method in methods]
    by_method = {c.method: c for c in cells}
    n_sel = len(selection_seeds)
    # grid points: a method with no record yet still owes the base grid
    owed = {m: len(by_method[m].scales) if m in by_method else len(base) for m in methods}
    missing = {
        m: len(by_method[m].missing_scales) if m in by_method else len(base) for m in methods
    }
    complete = all(m in by_method and by_method[m].status != "incomplete" for m in methods)
    extend = protocol.edge_extensions(
        [c for c in cells if c.status != "incomplete"],
        extended=protocol.read_extensions(grid_dir),
    )
    grid, final = _runs(folder.grid, task, selection_seeds), _runs(folder.final, task, seeds)
    # finals: a (method, seed) with a finished record; a cell failed at every scale has none
    # to train (its grid records are the report's failures)
    finished = set()
    if final is not None:
        ended = final[~final["status"].isin(_UNFINISHED)]
        finished = {(m, int(s)) for m, s in zip(ended["method"], ended["seed"], strict=True)}
    failed = {m for m, c in by_method.items() if c.status == "failed"}
    finals_left = {
        m: 0 if m in failed else sum((m, s) not in finished for s in seeds) for m in methods
    }
    per_method, task_mean = _pace([grid, final])
    spent = sum(float(r["wall_s"].fillna(0).sum()) for r in (grid, final) if r is not None)
    left = None
    if task_mean is not None:
        pace = {m: per_method.get(m, task_mean) for m in methods}
        runs_left = {
            m: missing[m] * n_sel + finals_left[m]
            + sum(n_sel for name in extend if name.endswith(f"--{m}"))
            for m in methods
        }  # fmt: skip
        left = sum(pace[m] * runs_left[m] for m in methods) / runs_at_once
    progress = TaskProgress(
        task=task,
        grid_done=sum(owed[m] - missing[m] for m in methods),
        grid_total=sum(owed.values()),
        to_extend=len(extend),
        grid_complete=complete,
        improving=protocol.still_improving(cells),
        finals_done=sum(len(seeds) - finals_left[m] for m in methods),
        finals_total=len(methods) * len(seeds),
        costs_measured=(results / "costs" / f"{task}.json").is_file(),
        spent_s=spent / runs_at_once,
        left_s=left,
        runs_at_once=runs_at_once,
    )
    if progress.doubles:
        progress.left_s = None
    return progress


def _hours(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 3600:.1f}"


def to_markdown(results: Path, rows: Sequence[TaskProgress], seeds: Sequence[int]) -> str:
    """The status table, its totals and each task's step-budget evidence."""
    at_once = rows[0].runs_at_once if rows else 1
    lines = [
        f"# Benchmark status: {results}",
        "",
        f"Grid points (every selection seed of a scale) and final runs (seeds "
        f"{','.join(map(str, seeds))}) done of expected; hours of wall time with "
        f"{at_once} run(s) at once, spent (the records) and left (at each method's mean wall "
        "time on the task so far).",
        "",
        "| task | grid | to extend | finals | costs | spent (h) | left (h) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        # while the grid runs, the cells still missing points may yet choose an edge
        extend = (
            str(r.to_extend) if r.grid_complete else f">= {r.to_extend}" if r.to_extend else "?"
        )
        lines.append(
            f"| {r.task} | {r.grid_done}/{r.grid_total} | {extend} | "
            f"{r.finals_done}/{r.finals_total} | {'measured' if r.costs_measured else 'to do'} | "
            f"{_hours(r.spent_s)} | {_hours(r.left_s)} |"
        )
    known = [r.left_s for r in rows if r.left_s is not None]
    unknown = [r.task for r in rows if r.why_no_estimate]
    left = _hours(sum(known)) + (f" + ? ({', '.join(unknown)})" if unknown else "")
    lines.append(f"| all | | | | | {_hours(sum(r.spent_s for r in rows))} | {left} |")
    lines += ["", "Step budget (the protocol doubles it when most chosen runs still improve):"]
    for r in rows:
        last, chosen = r.improving
        verdict = "doubles" if r.doubles else "holds" if r.grid_complete else "grid incomplete"
        why = r.why_no_estimate
        lines.append(
            f"- {r.task}: {last} of {chosen} chosen runs selected their last dev evaluation "
            f"({verdict}){f'; no estimate: {why}' if why else ''}"
        )
    return "\n".join(lines) + "\n"


def status_flow(
    results: Path, *, tasks: Sequence[str] | None, methods: Sequence[str] | None,
    seeds: Sequence[int], selection_seeds: Sequence[int] = protocol.SELECTION_SEEDS,
    scales: Sequence[float] | None = None, runs_at_once: int = 2,
) -> int:  # fmt: skip
    """``peftbench benchmark status``: prints the table; reads records only, trains nothing."""
    protocol.check_methods(methods)
    protocol.check_tasks(tasks)
    wanted = list(methods or protocol.preset_methods())
    base = protocol.preset_scales() if scales is None else [float(s) for s in scales]
    folder = _read(results, base, selection_seeds)
    rows = [
        task_progress(
            results, task, methods=wanted, seeds=seeds, selection_seeds=selection_seeds,
            scales=base, runs_at_once=runs_at_once, folder=folder,
        )
        for task in tasks or protocol.preset_tasks()
    ]  # fmt: skip
    print(to_markdown(results, rows, seeds), end="", flush=True)
    return 0
