"""Version 1 next to version 2, per task: mean ± sd over seeds, lr scale chosen, and rank.

    python docs/benchmarks/offline-2026-12-05/versions.py polarity

Reads both benchmarks' report CSVs and selections (nothing is typed in by hand), so the
write-up's "what moved" table re-derives from the records through `peftbench report`.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
V1 = HERE.parent / "offline-2026-12-02"


def scores(folder: Path, task: str) -> dict[str, tuple[float, float, int]]:
    """Method -> (mean x100, sd x100, seeds) of the task in the folder's report CSV."""
    with open(folder / "report" / "comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for row in rows:
        if row.get(f"{task}/mean"):
            std = row[f"{task}/std"]
            out[row["method"]] = (
                100 * float(row[f"{task}/mean"]),
                100 * float(std) if std else float("nan"),
                int(row[f"{task}/n"]),
            )
    return out


def scales(folder: Path, task: str) -> dict[str, float]:
    """Method -> the lr scale its selection chose for the task."""
    cells = json.loads((folder / "selection.json").read_text())["cells"]
    return {c["method"]: c["chosen"]["lr_scale"] for c in cells if c["task"] == task}


def main(task: str) -> None:
    old, new = scores(V1, task), scores(HERE, task)
    old_scale, new_scale = scales(V1, task), scales(HERE, task)
    rank_old = {m: i + 1 for i, m in enumerate(sorted(old, key=lambda m: -old[m][0]))}
    rank_new = {m: i + 1 for i, m in enumerate(sorted(new, key=lambda m: -new[m][0]))}
    print(f"| method | v1 {task} | v1 lr | v1 rank | v2 {task} | v2 lr | v2 rank | v2 - v1 |")
    print("| :-- | --: | --: | --: | --: | --: | --: | --: |")
    for m in sorted(new, key=lambda m: -new[m][0]):
        a, b = old.get(m), new[m]
        first = f"{a[0]:.1f} ± {a[1]:.1f}" if a else "–"
        delta = f"{b[0] - a[0]:+.1f}" if a else "–"
        print(
            f"| {m} | {first} | x{old_scale.get(m, '–'):g} | {rank_old.get(m, '–')} "
            f"| {b[0]:.1f} ± {b[1]:.1f} | x{new_scale.get(m, '–'):g} | {rank_new[m]} | {delta} |"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "polarity")
