"""The top-level README's headline table, rebuilt from this benchmark's report:

    python docs/benchmarks/offline-2026-12-05/headline.py            # print it
    python docs/benchmarks/offline-2026-12-05/headline.py --update   # into ../../../README.md

A row per method, best average rank first: each task's test score (mean ± sd over the final
seeds, x100), bold for the task's best mean, † where the paired bootstrap does not tell it from
the best (Holm, as in the report), ᶜ where a seed collapsed to a constant prediction; then the
average rank, % trainable parameters and the clean cost run's median step. Reads
`report/comparison.csv` and the metric names in `report/comparison.md` only (run the report
stage first), so the README's figures re-derive from the records.
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPORT = HERE / "report"
README = HERE.parents[2] / "README.md"
BEGIN, END = "<!-- headline.py: begin -->", "<!-- headline.py: end -->"
SHORT = {"accuracy": "acc.", "entity_f1": "entity F1", "macro_f1": "macro F1"}


def metrics() -> dict[str, str]:
    """Task -> its metric's short name, from the caption ("Metrics: hedge: accuracy (test)")."""
    caption = (REPORT / "comparison.md").read_text().split("Metrics: ", 1)[1].split(". ", 1)[0]
    found = re.findall(r"([\w-]+): (\w+) \(test\)", caption)
    return {task: SHORT.get(metric, metric) for task, metric in found}


def cell(row: dict, task: str, best: float) -> str:
    if not row[f"{task}/mean"]:
        return "–"
    mean, std = 100 * float(row[f"{task}/mean"]), 100 * float(row[f"{task}/std"] or 0)
    text = f"{mean:.1f} ± {std:.1f}"
    if float(row[f"{task}/mean"]) == best:
        text = f"**{text}**"
    elif row[f"{task}/test_vs_best"] and float(row[f"{task}/p_holm_vs_best"]) >= 0.05:
        text += "†"
    if int(float(row[f"{task}/n_collapsed"] or 0)):
        text += "ᶜ"
    return text


def table() -> str:
    with open(REPORT / "comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    named = metrics()
    tasks = sorted(named)
    best = {t: max(float(r[f"{t}/mean"]) for r in rows if r[f"{t}/mean"]) for t in tasks}
    rows.sort(key=lambda r: (float(r["avg_rank"]), r["method"]))
    lines = [
        "| Method | "
        + " | ".join(f"{t} {named[t]}" for t in tasks)
        + " | Avg. rank | % params | Step (ms) |",
        "| :-- |" + " --: |" * (len(tasks) + 3),
    ]
    for r in rows:
        cells = [cell(r, t, best[t]) for t in tasks]
        pct, step = float(r["trainable_pct"]), float(r["step_ms_clean"])
        cost = [
            f"{float(r['avg_rank']):.2f}",
            f"{pct:.2g}" if pct < 10 else f"{pct:.0f}",
            f"{step:.0f}",
        ]
        lines.append(f"| {r['method']} | " + " | ".join(cells + cost) + " |")
    return "\n".join(lines)


def update_readme(block: str) -> None:
    """Replace what lies between the README's two markers, so the headline cannot drift."""
    head, rest = README.read_text().split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{block}\n{END}{tail}")


if __name__ == "__main__":
    if "--update" in sys.argv[1:]:
        update_readme(table())
    else:
        print(table())
