"""What the second model size changes, for the write-up's SmolLM2-135M section:

    PYTHONPATH=. python docs/benchmarks/offline-2026-12-05/sizes.py [--large DIR] [--task T]

polarity at MiniLM-L6 (22M parameters, 5 seeds, `report/`) against SmolLM2-135M (6x the
size, 3 seeds, `smollm2/report/`), over the methods both ran (the subset, protocol item 7):
each method's score and rank at both sizes; how far the two orders agree (Spearman's rho,
Kendall's tau); which pairs each size separates at the example level, with Holm's family the
subset's pairs at both sizes (MiniLM's report corrects over all 210 pairs of 21 methods, which
would make it look less resolving than the smaller family SmolLM2 is tested in); pairs whose
order flips; collapsed runs. Reads the two reports' `comparison.{csv,md}` and `pairs.csv`
only (run each folder's report stage first), so every figure re-derives from the records.
"""

from __future__ import annotations

import argparse
import csv
import re
from itertools import combinations
from pathlib import Path

from scipy.stats import kendalltau, spearmanr

from analysis.stats import ALPHA, holm

HERE = Path(__file__).resolve().parent
NOT_PEFT = {"full", "linear"}  # the references: "PEFT pairs" leave them out


class Size:
    """One model's report on the task: means, spreads and pair tests over the subset."""

    def __init__(self, report: Path, task: str):
        with open(report / "comparison.csv", newline="") as f:
            self.rows = {r["method"]: r for r in csv.DictReader(f) if r.get(f"{task}/mean")}
        with open(report / "pairs.csv", newline="") as f:
            self.pairs = [p for p in csv.DictReader(f) if p["task"] == task]
        self.model = next(iter(self.rows.values()))["model"] if self.rows else "?"
        self.task = task
        self.power = _power(report / "comparison.md", task)

    def mean(self, method: str) -> float:
        return float(self.rows[method][f"{self.task}/mean"])

    def cell(self, method: str) -> str:
        row = self.rows[method]
        std = float(row[f"{self.task}/std"] or "nan")
        collapsed = int(float(row.get(f"{self.task}/n_collapsed") or 0))
        mark = f" ({collapsed} collapsed)" if collapsed else ""
        return f"{100 * self.mean(method):.1f} ± {100 * std:.1f}{mark}"

    def share(self, method: str) -> str:
        """Trainable parameters, % of the model's (three significant figures)."""
        return f"{float(self.rows[method]['trainable_pct']):.3g}"

    def subset_pairs(self, methods: set[str]) -> dict[frozenset, dict]:
        """The subset's pairs, Holm-adjusted again within the subset's family."""
        own = [p for p in self.pairs if {p["better"], p["worse"]} <= methods]
        adjusted = holm([float(p["p"]) for p in own])
        return {
            frozenset((p["better"], p["worse"])): {**p, "apart": bool(q < ALPHA)}
            for p, q in zip(own, adjusted, strict=True)
        }


def _power(comparison_md: Path, task: str) -> str:
    """The report's "N seeds × M test examples detect X" for the task (points)."""
    found = re.search(
        rf"{re.escape(task)}: (\d+) seeds × ([\d,]+) test examples detect ([\d.]+)",
        comparison_md.read_text(),
    )
    return "{} seeds × {} test examples detect {} points".format(*found.groups()) if found else "?"


def ranks(size: Size, methods: list[str]) -> dict[str, int]:
    order = sorted(methods, key=size.mean, reverse=True)
    return {m: order.index(m) + 1 for m in methods}


def score_table(small: Size, large: Size, methods: list[str]) -> list[str]:
    """A row per method, best at the large size first: score (mean ± sd, points) and rank."""
    r_small, r_large = ranks(small, methods), ranks(large, methods)
    lines = [
        f"| method | {small.model} | rank | {large.model} | rank | places up | % params |",
        "| :-- | --: | --: | --: | --: | --: | --: |",
    ]
    for m in sorted(methods, key=r_large.get):
        moved = r_small[m] - r_large[m]  # up the order at the large size
        lines.append(
            f"| {m} | {small.cell(m)} | {r_small[m]} | {large.cell(m)} | {r_large[m]} "
            f"| {f'{moved:+d}' if moved else '0'} | {small.share(m)} / {large.share(m)} |"
        )
    return lines


def agreement(small: Size, large: Size, methods: list[str]) -> list[str]:
    """Rank correlation of the two sizes' mean scores, over all the subset and its PEFT part."""
    lines = []
    for label, chosen in (("the subset", methods), ("its PEFT methods", _peft(methods))):
        a, b = [small.mean(m) for m in chosen], [large.mean(m) for m in chosen]
        rho, p_rho = spearmanr(a, b)
        tau, p_tau = kendalltau(a, b)
        lines.append(
            f"- {label} ({len(chosen)} methods): Spearman's rho {rho:.2f} (p = {p_rho:.2g}), "
            f"Kendall's tau {tau:.2f} (p = {p_tau:.2g})"
        )
    return lines


def _peft(methods: list[str]) -> list[str]:
    return [m for m in methods if m not in NOT_PEFT]


def pair_lines(small: Size, large: Size, methods: list[str]) -> list[str]:
    """Pairs separated at either size, grouped by where: the difference at both sizes."""
    at_small, at_large = small.subset_pairs(set(methods)), large.subset_pairs(set(methods))
    groups: dict[str, list[str]] = {
        "both sizes": [],
        f"{small.model} only": [],
        f"{large.model} only": [],
    }
    for a, b in combinations(sorted(methods), 2):
        key = frozenset((a, b))
        one, two = at_small.get(key), at_large.get(key)
        if not one or not two or not (one["apart"] or two["apart"]):
            continue
        better = (one if one["apart"] else two)["better"]
        worse = b if better == a else a
        where = list(groups)[0 if one["apart"] and two["apart"] else 1 if one["apart"] else 2]
        reversed_ = one["better"] != two["better"]
        flag = " **(the order flips)**" if where == "both sizes" else " (means reversed)"
        groups[where].append(
            f"  - {better} - {worse}: {small.model} {_diff(one, better)}, "
            f"{large.model} {_diff(two, better)}" + (flag if reversed_ else "")
        )
    lines = [
        f"Separated (Holm over the subset's {len(at_small)} pairs): {small.model} "
        f"{sum(p['apart'] for p in at_small.values())}, {large.model} "
        f"{sum(p['apart'] for p in at_large.values())}.\n",
    ]
    for where, found in groups.items():
        lines += [f"- at {where}: {len(found)}", *found]
    return lines


def _diff(pair: dict, better: str) -> str:
    """better - worse in points with its 95% interval; bold where separated."""
    sign = -1 if pair["better"] == better else 1  # the csv's diff is worse - better
    d, lo, hi = (sign * 100 * float(pair[k]) for k in ("diff", "ci_low", "ci_high"))
    lo, hi = sorted((lo, hi))
    text = f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]"
    return f"**{text}**" if pair["apart"] else text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=Path, default=HERE / "report")
    parser.add_argument("--large", type=Path, default=HERE / "smollm2" / "report")
    parser.add_argument("--task", default="polarity")
    args = parser.parse_args(argv)
    small, large = Size(args.small, args.task), Size(args.large, args.task)
    methods = sorted(set(small.rows) & set(large.rows))
    if len(methods) < 3:
        raise SystemExit(f"sizes.py: {len(methods)} methods at both sizes; run the subset first")
    print(f"### {args.task} at two sizes (`sizes.py`)\n")
    print(f"Accuracy (points, mean ± sd over seeds) of the {len(methods)} methods both ran:\n")
    print("\n".join(score_table(small, large, methods)))
    print(f"\nResolving power: {small.model} {small.power}; {large.model} {large.power}.\n")
    print("How far the two sizes agree on the order of the methods:\n")
    print("\n".join(agreement(small, large, methods)))
    print("\nPairs separated at either size (better - worse, points, 95% interval; bold:")
    print("separated at that size):\n")
    print("\n".join(pair_lines(small, large, methods)))


if __name__ == "__main__":
    main()
