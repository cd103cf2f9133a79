"""Whether a benchmark folder kept its protocol (``peftbench benchmark audit``), from its records.

A benchmark is published on the claim that its tuning never saw test, that every reported
run trains the recipe its selection chose, that every score can be re-paired example by
example, and that one setting (device, precision, packages, data) produced a task's numbers.
Those claims are made by code paths that could regress, and by people who move records
around between chunks; this re-checks them after the fact, from the records alone:

- **sealed**: no grid record (the selection seeds and the extension points) holds a test
  score, a test prediction or a test entry in its history;
- **recipe**: every final run trains its cell's chosen grid recipe, the seed and the sealed
  test aside (a final left over from an earlier choice would mix into the table);
- **predictions**: every final run has its predictions file beside it, with the sha256 its
  record names and one test row per test example;
- **test once**: every final run evaluated test once, at the end (one history entry);
- **one setting**: per task, one device kind, precision, torch, transformers and peft, one
  data fingerprint and test size, and no synthetic weights, over grid and final runs alike;
- **complete**: every chosen cell has a final run on every final seed (while chunks remain,
  incomplete is not a fault unless ``--complete`` asks for it).

Reads JSON records and hashes predictions files; trains nothing, imports no torch.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from peftbench.launch import protocol

#: Per task, over grid and final records: one value each, or the numbers mix settings.
SETTING = {
    "device": ("env", "device"),
    "precision": ("experiment", "recipe", "train.precision"),
    "torch": ("env", "torch"),
    "transformers": ("env", "transformers"),
    "peft": ("env", "peft"),
    "data fingerprint": ("data", "fingerprint"),
    "test examples": ("data", "n", "test"),
}
CHECKS = ("sealed", "recipe", "predictions", "test once", "one setting")
SHOWN = 3  # offending files named per problem (the count says how many)


@dataclass
class Problem:
    task: str
    check: str  # one of CHECKS
    what: str
    files: list[str]

    def line(self) -> str:
        names = ", ".join(self.files[:SHOWN])
        more = f" +{len(self.files) - SHOWN} more" if len(self.files) > SHOWN else ""
        return f"- {self.task}, {self.check}: {self.what}" + (f" ({names}{more})" if names else "")


@dataclass
class TaskAudit:
    task: str
    test_examples: list[int]
    grid_runs: int
    finals_done: int
    finals_total: int
    problems: list[Problem] = field(default_factory=list)

    def passed(self, check: str) -> bool:
        return not any(p.check == check for p in self.problems)


def latest_records(folder: Path) -> list[tuple[Path, dict]]:
    """The newest record per run id in ``folder/records`` (file names sort by time)."""
    latest: dict[str, tuple[Path, dict]] = {}
    for path in sorted((folder / "records").glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(record, dict) and "run_id" in record:
            latest[record["run_id"]] = (path, record)
    return list(latest.values())


def _dig(record: dict, keys: Iterable[str]):
    value = record
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _test_entries(record: dict) -> int:
    return sum(any(k.startswith("test/") for k in row) for row in record.get("history") or [])


def _trained_hash(recipe: dict) -> str:
    from peftbench.config.identity import recipe_hash

    return recipe_hash(protocol.trained_recipe(recipe))


def check_sealed(task: str, grid: Sequence[tuple[Path, dict]]) -> list[Problem]:
    seen = [
        p.name
        for p, r in grid
        if (r.get("metrics") or {}).get("test")
        or _dig(r, ("predictions", "n", "test"))
        or _test_entries(r)
    ]
    return [Problem(task, "sealed", f"{len(seen)} grid run(s) saw test", seen)] if seen else []


def check_predictions(task: str, finals: Sequence[tuple[Path, dict]]) -> list[Problem]:
    from peftbench.records.predictions import sha256

    missing, altered, short = [], [], []
    for path, record in finals:
        section = record.get("predictions") or {}
        file = path.parent / str(section.get("file", ""))
        if not section or not file.is_file():
            missing.append(path.name)
        elif sha256(file.read_bytes()) != section.get("sha256"):
            altered.append(file.name)
        elif _dig(section, ("n", "test")) != _dig(record, ("data", "n", "test")):
            short.append(path.name)
    found = [
        ("no predictions file beside", missing),
        ("a predictions file whose sha256 is not its record's", altered),
        ("test rows other than the test split's size", short),
    ]
    return [
        Problem(task, "predictions", f"{len(files)} final run(s) with {what}", files)
        for what, files in found
        if files
    ]


def check_test_once(task: str, finals: Sequence[tuple[Path, dict]]) -> list[Problem]:
    bad = [
        p.name
        for p, r in finals
        if not (r.get("metrics") or {}).get("test") or _test_entries(r) != 1
    ]
    what = f"{len(bad)} final run(s) without exactly one test evaluation"
    return [Problem(task, "test once", what, bad)] if bad else []


def check_setting(task: str, runs: Sequence[tuple[Path, dict]]) -> list[Problem]:
    problems = []
    for name, keys in SETTING.items():
        values = Counter(str(_dig(r, keys)) for _, r in runs)
        if len(values) > 1:
            split = ", ".join(f"{v} ({n} runs)" for v, n in values.most_common())
            rare = {v for v, _ in values.most_common()[1:]}
            files = [p.name for p, r in runs if str(_dig(r, keys)) in rare]
            problems.append(Problem(task, "one setting", f"{name} differs: {split}", files))
    synthetic = [p.name for p, r in runs if _dig(r, ("experiment", "weights")) == "synthetic"]
    if synthetic:
        what = f"{len(synthetic)} run(s) on synthetic weights"
        problems.append(Problem(task, "one setting", what, synthetic))
    return problems


def check_recipes(
    task: str, cells: Sequence[protocol.Cell], finals: Sequence[tuple[Path, dict]],
    seeds: Sequence[int],
) -> tuple[list[Problem], int, int]:  # fmt: skip
    """Final runs against their cell's chosen grid recipe: (problems, done, expected)."""
    chosen = {}
    for cell in cells:
        if cell.chosen is not None:
            grid = json.loads(Path(cell.chosen.path).read_text(encoding="utf-8"))
            chosen[(cell.model, cell.method)] = _trained_hash(grid["experiment"]["recipe"])
    done, stray, orphan = set(), [], []
    for path, record in finals:
        e = record["experiment"]
        want = chosen.get((e["model"], e["method"]))
        if want is None:
            orphan.append(path.name)
        elif _trained_hash(e.get("recipe") or {}) != want:
            stray.append(path.name)
        else:
            done.add((e["model"], e["method"], int(e["seed"])))
    problems = [
        Problem(task, "recipe", f"{len(f)} final run(s) {w}", f)
        for w, f in (
            ("train a recipe other than their cell's chosen one", stray),
            ("belong to no selected cell", orphan),
        )
        if f
    ]
    return problems, len(done), len(chosen) * len(seeds)


def audit_task(
    task: str, cells: Sequence[protocol.Cell], seeds: Sequence[int],
    selection_seeds: Sequence[int], grid: Sequence[tuple[Path, dict]],
    final: Sequence[tuple[Path, dict]],
) -> TaskAudit:  # fmt: skip
    def of_task(runs, wanted):
        return [
            (p, r)
            for p, r in runs
            if r["experiment"]["task"] == task
            and r["status"] == "success"
            and int(r["experiment"]["seed"]) in wanted
        ]

    grid_runs, finals = of_task(grid, selection_seeds), of_task(final, seeds)
    recipe_problems, done, total = check_recipes(task, cells, finals, seeds)
    problems = [
        *check_sealed(task, grid_runs),
        *recipe_problems,
        *check_predictions(task, finals),
        *check_test_once(task, finals),
        *check_setting(task, [*grid_runs, *finals]),
    ]
    sizes = sorted({int(n) for _, r in finals if (n := _dig(r, ("data", "n", "test")))})
    return TaskAudit(task, sizes, len(grid_runs), done, total, problems)


def to_markdown(results: Path, rows: Sequence[TaskAudit], seeds: Sequence[int]) -> str:
    lines = [
        f"# Benchmark audit: {results}",
        "",
        f"Grid runs (selection seeds, successes) and final runs (seeds "
        f"{','.join(map(str, seeds))}) of every chosen cell, checked from the records "
        "(`peftbench/launch/audit.py` says what each check means).",
        "",
        "| task | test examples | grid runs | finals | " + " | ".join(CHECKS) + " |",
        "|---|---:|---:|---:|" + "---|" * len(CHECKS),
    ]
    for row in rows:
        marks = " | ".join("ok" if row.passed(c) else "**FAIL**" for c in CHECKS)
        sizes = ", ".join(f"{n:,}" for n in row.test_examples) or "–"
        finals = f"{row.finals_done}/{row.finals_total}" if row.finals_total else "no choice yet"
        lines.append(f"| {row.task} | {sizes} | {row.grid_runs} | {finals} | {marks} |")
    problems = [p for row in rows for p in row.problems]
    lines += ["", f"Problems: {len(problems)}" + (":" if problems else ".")]
    lines += [p.line() for p in problems]
    left = {r.task: r.finals_total - r.finals_done for r in rows if r.finals_done < r.finals_total}
    by_task = f" ({', '.join(f'{t} {n}' for t, n in left.items())})" if left else ""
    unchosen = [r.task for r in rows if not r.finals_total]
    lines.append(
        f"Final runs left: {sum(left.values())}{by_task}"
        + (f"; no cell chosen yet: {', '.join(unchosen)}." if unchosen else ".")
    )
    return "\n".join(lines) + "\n"


def audit_flow(
    results: Path, *, tasks: Sequence[str] | None, seeds: Sequence[int],
    selection_seeds: Sequence[int] = protocol.SELECTION_SEEDS,
    scales: Sequence[float] | None = None, complete: bool = False,
) -> int:  # fmt: skip
    """``peftbench benchmark audit``: prints the audit; 1 when a check fails (or, with
    ``complete``, a final run is missing), else 0."""
    protocol.check_tasks(tasks)
    grid_dir = results / "grid"
    if not (grid_dir / "records").is_dir():
        from peftbench.errors import ConfigError

        raise ConfigError(f"no grid records in {grid_dir}", "pass the benchmark folder")
    cells_by_task = defaultdict(list)
    for cell in protocol.select_cells(grid_dir, scales, selection_seeds):
        cells_by_task[cell.task].append(cell)
    grid = latest_records(grid_dir)
    final = latest_records(results / "final") if (results / "final" / "records").is_dir() else []
    rows = [
        audit_task(t, cells_by_task[t], seeds, selection_seeds, grid, final)
        for t in tasks or protocol.preset_tasks()
    ]
    print(to_markdown(results, rows, seeds), end="", flush=True)
    broken = any(r.problems for r in rows)
    missing = any(r.finals_done < r.finals_total or not r.finals_total for r in rows)
    return 1 if broken or (complete and missing) else 0
