"""One task's facts for the write-up, re-derived from the records and the report files:

    python docs/benchmarks/offline-2026-12-05/facts.py hedge

selection (edges, extension, the step-budget rule), finals (seeds, predictions, runs still
improving, collapses), compute (the records' wall time, two runs at a time), the resolving
power the table states and which pairs `report/pairs.csv` separates. Run the report stage
first; nothing here is typed in by hand, so every figure the write-up quotes re-derives.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))  # the repository
from peftbench.launch import protocol  # noqa: E402  (the selection's own rules)

GRID_SCALES = {0.3, 1.0, 3.0, 10.0}
NOT_PEFT = {"full", "linear"}  # the references: "PEFT pairs" leave them out
PARALLEL_RUNS = 2  # the benchmark trained two runs at a time


def records(folder: Path, task: str) -> list[dict]:
    """The latest success per run id of ``task`` in ``folder/records``."""
    latest = {}
    for path in sorted((folder / "records").glob(f"{task}--*__success.json")):
        record = json.loads(path.read_text())
        latest[record["run_id"]] = record  # names sort by time: the last one wins
    return list(latest.values())


def method(record: dict) -> str:
    return record["config"]["method"]["name"]


def hours(runs: list[dict]) -> float:
    return sum(r["cost"]["wall_s"] for r in runs) / PARALLEL_RUNS / 3600


def last_ties_best(record: dict) -> bool:
    """Whether a run's last dev evaluation scored the same as the earlier one it selected:
    the loop keeps the earlier of equal scores, so the step-budget rule counts the run as
    not improving, though it was still level at its end (on a short last stretch at a
    nearly decayed rate a tie is likely: bbc-news evaluates at steps 100, 200 and 214)."""
    metric = record["config"]["task"]["primary_metric"]
    devs = [row[f"dev/{metric}"] for row in record.get("history") or [] if f"dev/{metric}" in row]
    if not devs or protocol.selected_last_evaluation(record) is not False:
        return False
    return devs[-1] == record["metrics"]["dev"][metric]


def selection_facts(task: str) -> list[str]:
    # The cells as `benchmark select` builds them from the grid records (and extensions.json).
    cells = protocol.by_task(protocol.select_cells(HERE / "grid"), [task]).get(task, [])
    extended = json.loads((HERE / "extensions.json").read_text())
    extended = {k.split("--")[-1]: v for k, v in extended.items() if k.startswith(f"{task}--")}
    grid = records(HERE / "grid", task)
    on_grid = [r for r in grid if r["config"]["method"]["lr_scale"] in GRID_SCALES]
    chosen = [c for c in cells if c.chosen]
    moved = sorted(c.method for c in chosen if c.chosen.lr_scale not in GRID_SCALES)
    last = sorted(c.method for c in chosen if c.chosen.selected_last)
    budget = protocol.step_budgets(cells)[task]
    tied = sorted(
        c.method for c in chosen if last_ties_best(json.loads(Path(c.chosen.path).read_text()))
    )
    tested = [r["run_id"] for r in grid if r["metrics"].get("test")]
    collapsed = defaultdict(list)  # lr scale -> the methods whose run there collapsed
    for r in grid:
        if (r.get("quality") or {}).get("collapsed"):
            collapsed[r["config"]["method"]["lr_scale"]].append(method(r))
    return [
        f"- Grid: {len(on_grid)} runs, {hours(on_grid):.2f} h; extension: "
        f"{len(grid) - len(on_grid)} runs for {len(extended)} cells at an edge "
        f"({', '.join(f'{m} x{s[0]:g}' for m, s in sorted(extended.items())) or 'none'}), "
        f"{hours([r for r in grid if r not in on_grid]):.2f} h; moved to the new point: "
        f"{', '.join(moved) or 'none'}; still at an edge: "
        f"{sum(protocol.at_grid_edge(c) for c in cells)} of {len(cells)}.",
        f"- Chosen grid runs that selected their last dev evaluation: "
        f"{budget['still_improving']} of {budget['chosen']} ({', '.join(last) or 'none'}): "
        + (
            "most: the rule asks for a longer budget."
            if budget["doubles"]
            else "not most: the task keeps its budget."
        ),  # fmt: skip
        f"- Of the others, chosen runs whose last evaluation tied their selected best: "
        f"{len(tied)} ({', '.join(tied) or 'none'}).",
        "- Collapsed grid runs: "
        + (
            "; ".join(f"x{k:g}: {', '.join(sorted(v))}" for k, v in sorted(collapsed.items()))
            or "none"
        )  # fmt: skip
        + ".",
        f"- Grid records holding a test metric: {len(tested)} (test sealed).",
    ]


def final_facts(task: str) -> list[str]:
    finals = records(HERE / "final", task)
    by_method = defaultdict(list)
    for r in finals:
        by_method[method(r)].append(r)
    seeds = Counter(len(rs) for rs in by_method.values())
    folder = HERE / "final" / "records"
    with_predictions = sum((folder / r["predictions"]["file"]).exists() for r in finals
                           if r.get("predictions"))  # fmt: skip
    last = {
        m: sum(bool(protocol.selected_last_evaluation(r)) for r in rs)
        for m, rs in by_method.items()
    }
    collapsed = {m: sum(bool((r.get("quality") or {}).get("collapsed")) for r in rs)
                 for m, rs in by_method.items()}  # fmt: skip
    mostly_last = [
        f"{m} {n}/{len(by_method[m])}" for m, n in sorted(last.items()) if 2 * n > len(by_method[m])
    ]
    return [
        f"- Finals: {len(finals)} runs, {len(by_method)} methods x "
        f"{', '.join(f'{k} seeds ({v})' for k, v in sorted(seeds.items()))}, "
        f"{hours(finals):.2f} h; predictions beside {with_predictions} of {len(finals)}.",
        f"- Finals that selected their last dev evaluation: {sum(last.values())} of "
        f"{len(finals)}; most seeds of: {', '.join(mostly_last) or 'no method'}.",
        f"- Collapsed finals: {sum(collapsed.values())} of {len(finals)}"
        + (
            ": "
            + ", ".join(f"{m} {n}/{len(by_method[m])}" for m, n in sorted(collapsed.items()) if n)
            if any(collapsed.values())
            else ""
        )  # fmt: skip
        + ".",
    ]


def report_facts(task: str) -> list[str]:
    text = (HERE / "report" / "comparison.md").read_text()
    power = re.search(rf"{re.escape(task)}: (\d+) seeds × ([\d,]+) test examples detect ([\d.]+)",
                      text)  # fmt: skip
    with open(HERE / "report" / "pairs.csv", newline="") as f:
        pairs = [row for row in csv.DictReader(f) if row["task"] == task]
    separated = [p for p in pairs if p["separated"] == "True"]
    peft = [p for p in pairs if not {p["better"], p["worse"]} & NOT_PEFT]
    full = sorted(p["worse"] if p["better"] == "full" else p["better"] for p in separated
                  if "full" in (p["better"], p["worse"]))  # fmt: skip
    return [
        "- Resolving power: "
        + (
            f"{power[1]} seeds x {power[2]} test examples detect {power[3]} points from the best."
            if power
            else "not stated in report/comparison.md."
        ),  # fmt: skip
        f"- Pairs separated: {len(separated)} of {len(pairs)}; PEFT pairs: "
        f"{sum(p['separated'] == 'True' for p in peft)} of {len(peft)}; full fine-tuning "
        f"separated from: {', '.join(full) or 'none'}.",
    ]


def main(task: str) -> None:
    print(f"### {task}: facts (`facts.py {task}`)\n")
    print("\n".join([*selection_facts(task), *final_facts(task), *report_facts(task)]))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "polarity")
