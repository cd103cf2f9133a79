"""The report's list of collapsed runs: successes that learnt no more than a constant.

A run's record says ``quality.collapsed`` (``peftbench/measure/quality.py``): its dev
predictions were one class at every evaluation, or its primary metric never beat the best
constant prediction. Such a run stays a success (it is a result of the recipe, and a re-run
collapses again), so tables keep it in the mean; this file says where it happened, how often
per cell, and why, and the table shows the median beside the mean of such a cell.
"""

from __future__ import annotations

import pandas as pd

COLLAPSED_FILE = "collapsed.md"


def collapsed_markdown(runs: pd.DataFrame) -> str | None:
    """``collapsed.md``: the collapse rate of every cell with a collapsed run, and each run.

    Args:
        runs: Quality runs (``frame.quality_runs``) with the ``collapsed`` column.

    Returns:
        Markdown, or None when no run collapsed (or no record was assessed).
    """
    if "collapsed" not in runs or not runs["collapsed"].eq(True).any():
        return None
    flagged = runs["collapsed"].eq(True)
    assessed = runs["collapsed"].notna()
    cells = runs.assign(flag=flagged).groupby(["task", "model", "method_label"], sort=True)
    rates = cells["flag"].agg(["sum", "size"])
    hit = rates[rates["sum"] > 0]
    lines = [
        f"# Runs collapsed to a constant prediction ({int(flagged.sum())} of "
        f"{int(assessed.sum())} assessed runs; {len(hit)} of {len(rates)} cells)",
        "",
        "Collapsed: the run's dev predictions were one class at every evaluation, or its dev "
        "primary metric never beat the best constant prediction (the record's "
        "`quality.baseline`). Such runs stay successes; the table's mean counts them and "
        "shows the median beside it.",
        "",
        "| task | model | method | collapsed | seeds | rate |",
        "|:--|:--|:--|--:|--:|--:|",
    ]
    for (task, model, label), row in hit.iterrows():
        rate = row["sum"] / row["size"]
        lines.append(
            f"| {task} | {model} | {_cell(label)} | {int(row['sum'])} | {int(row['size'])} "
            f"| {rate:.0%} |"
        )
    lines += ["", "| run_id | primary | reason |", "|:--|--:|:--|"]
    for _, run in runs[flagged].sort_values("run_id").iterrows():
        value = run["primary_value"]
        lines.append(
            f"| {run['run_id']} | {run['primary_split']} {run['primary_name']} {value:.4f} "
            f"| {_cell(str(run['collapse_reason'] or ''))} |"
        )
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", r"\|")
