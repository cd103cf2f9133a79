"""The benchmark across its tasks, for the write-up's cross-task section:

    python docs/benchmarks/offline-2026-12-05/across.py

per task the design and what it resolves; how far the tasks agree on the methods' order
(Spearman's rho per pair of tasks, Kendall's W over all); the pairs of methods separated at
the example level on more than one task (and any pair whose order flips between tasks); the
collapse rate per method. Reads `report/comparison.csv` and `report/pairs.csv` only (run the
report stage first), so every figure re-derives from the records.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy.stats import rankdata, spearmanr

HERE = Path(__file__).resolve().parent
REPORT = HERE / "report"
NOT_PEFT = {"full", "linear"}  # the references: "PEFT pairs" leave them out


def rows(name: str) -> list[dict]:
    with open(REPORT / name, newline="") as f:
        return list(csv.DictReader(f))


def tasks_of(comparison: list[dict]) -> list[str]:
    return sorted({key.split("/")[0] for key in comparison[0] if key.endswith("/mean")})


def design_table(tasks: list[str], pairs: list[dict]) -> list[str]:
    """A row per task: test examples, seeds, the smallest difference detected, pairs apart."""
    text = (REPORT / "comparison.md").read_text()
    lines = [
        "| task | test examples | seeds | detects (points) | pairs separated | PEFT pairs |",
        "| :-- | --: | --: | --: | --: | --: |",
    ]
    for task in tasks:
        power = re.search(rf"{re.escape(task)}: (\d+) seeds × ([\d,]+) test examples detect "
                          r"([\d.]+)", text)  # fmt: skip
        own = [p for p in pairs if p["task"] == task]
        apart = [p for p in own if p["separated"] == "True"]
        peft = [p for p in own if not {p["better"], p["worse"]} & NOT_PEFT]
        peft_apart = sum(p["separated"] == "True" for p in peft)
        seeds, examples, detects = power.groups() if power else ("?", "?", "?")
        lines.append(
            f"| {task} | {examples} | {seeds} | {detects} | {len(apart)} of {len(own)} "
            f"| {peft_apart} of {len(peft)} |"
        )
    return lines


def repeated_pairs(pairs: list[dict]) -> list[str]:
    """Pairs separated on two or more tasks, each with the tasks that order it each way."""
    order: dict[frozenset, dict[tuple[str, str], list[str]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for p in pairs:
        if p["separated"] == "True":
            order[frozenset((p["better"], p["worse"]))][(p["better"], p["worse"])].append(p["task"])
    lines = []
    for ways in sorted(order.values(), key=lambda w: (-sum(map(len, w.values())), sorted(w))):
        if sum(map(len, ways.values())) < 2:
            continue
        said = "; ".join(
            f"{a} > {b} on {', '.join(sorted(t))}" for (a, b), t in sorted(ways.items())
        )
        flip = " **(the order flips)**" if len(ways) > 1 else ""
        peft = "" if set().union(*map(set, ways)) & NOT_PEFT else " (PEFT pair)"
        lines.append(f"- {said}{peft}{flip}")
    return lines or ["- none"]


def agreement(tasks: list[str], comparison: list[dict]) -> list[str]:
    """Spearman's rho of the methods' mean scores for each pair of tasks, and Kendall's W of
    their ranks over the methods every task has (1: one order everywhere; 0: no agreement)."""
    means = {
        t: {r["method"]: float(r[f"{t}/mean"]) for r in comparison if r.get(f"{t}/mean")}
        for t in tasks
    }
    lines = [
        "| tasks | methods | Spearman's rho | PEFT methods only |",
        "| :-- | --: | --: | --: |",
    ]
    for a, b in combinations(tasks, 2):
        shared = sorted(set(means[a]) & set(means[b]))
        peft = [m for m in shared if m not in NOT_PEFT]
        rho = spearmanr([means[a][m] for m in shared], [means[b][m] for m in shared])[0]
        rho_peft = spearmanr([means[a][m] for m in peft], [means[b][m] for m in peft])[0]
        lines.append(f"| {a}, {b} | {len(shared)} | {rho:.2f} | {rho_peft:.2f} |")
    common = sorted(set.intersection(*(set(means[t]) for t in tasks)))
    ranks = np.array([rankdata([-means[t][m] for m in common]) for t in tasks])
    k, n = ranks.shape
    spread = ((ranks.sum(axis=0) - k * (n + 1) / 2) ** 2).sum()
    w = 12 * spread / (k**2 * (n**3 - n))
    lines.append(f"\nKendall's W over the {k} tasks and the {n} methods they share: {w:.2f}.")
    return lines


#: Version 1's four published orderings as differences "a - b" (docs/benchmarks/README.md):
#: Delta Tuning's full >= LoRA ~ adapters > prefix > prompt; LoRA ~ full (Hu et al.); deep
#: prompts above shallow ones (prefix, P-tuning v2); prompt tuning far below model tuning at
#: small scale (Lester et al.).
ORDERINGS = [
    ("full", "lora"), ("lora", "adapter"), ("lora", "pfeiffer"), ("adapter", "prefix"),
    ("pfeiffer", "prefix"), ("prefix", "prompt"), ("ptuning", "prompt"), ("full", "prompt"),
    ("prompt", "linear"),
]  # fmt: skip


def orderings_table(tasks: list[str], pairs: list[dict]) -> list[str]:
    """Each ordering's difference per task in points, with its 95% interval; bold where the
    pair is separated (Holm)."""
    found = {(p["task"], p["better"], p["worse"]): p for p in pairs}
    lines = ["| a - b | " + " | ".join(tasks) + " |", "| :-- |" + " --: |" * len(tasks)]
    for a, b in ORDERINGS:
        cells = []
        for task in tasks:
            row, sign = found.get((task, a, b)), -1  # diff is worse - better
            if row is None:
                row, sign = found.get((task, b, a)), 1
            if row is None:
                cells.append("–")
                continue
            d, lo, hi = (sign * 100 * float(row[k]) for k in ("diff", "ci_low", "ci_high"))
            lo, hi = sorted((lo, hi))
            text = f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]"
            cells.append(f"**{text}**" if row["separated"] == "True" else text)
        lines.append(f"| {a} - {b} | " + " | ".join(cells) + " |")
    return lines


def collapse_table(tasks: list[str], comparison: list[dict]) -> list[str]:
    """A row per method with a collapsed final on some task: collapsed of run, per task."""
    lines = [
        "| method | " + " | ".join(tasks) + " | all |",
        "| :-- |" + " --: |" * (len(tasks) + 1),
    ]
    for row in comparison:
        counts = [(int(float(row.get(f"{t}/n_collapsed") or 0)), int(float(row.get(f"{t}/n") or 0)))
                  for t in tasks]  # fmt: skip
        collapsed, runs = sum(c for c, _ in counts), sum(n for _, n in counts)
        if collapsed:
            cells = [f"{c}/{n}" if n else "–" for c, n in counts]
            lines.append(f"| {row['method']} | " + " | ".join(cells) + f" | {collapsed}/{runs} |")
    return lines if len(lines) > 2 else ["No final run collapsed."]


def main() -> None:
    comparison, pairs = rows("comparison.csv"), rows("pairs.csv")
    tasks = tasks_of(comparison)
    print(f"### Across {len(tasks)} tasks (`across.py`)\n")
    print("\n".join(design_table(tasks, pairs)))
    print("\nHow far the tasks agree on the order of the methods (their mean test scores):\n")
    print("\n".join(agreement(tasks, comparison)))
    print("\nVersion 1's four orderings, as differences in points (95% interval; bold:")
    print("separated, Holm):\n")
    print("\n".join(orderings_table(tasks, pairs)))
    print("\nPairs separated on two or more tasks (paired bootstrap over seeds x test examples,")
    print("Holm-corrected within each task):\n")
    print("\n".join(repeated_pairs(pairs)))
    print("\nCollapsed final runs (a constant prediction) per method:\n")
    print("\n".join(collapse_table(tasks, comparison)))


if __name__ == "__main__":
    main()
