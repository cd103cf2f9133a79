"""Which pairs of methods a task separates: every pair, at the example level (issue 38).

The comparison table tests each method against its column's best. A benchmark's question is
wider: which methods differ at all. Every pair of a task's methods whose runs stored
predictions is compared by the two-level bootstrap of :func:`analysis.paired.compare`
(seeds x test examples, seeds paired where the task shows a shared seed effect), and the
task's pairs form one Holm family. Holm's first step needs p < 0.05 / pairs, and a bootstrap
p is at least 2 / (B + 1), so B grows with the family as in the table (2.5 pairs / 0.05:
10,500 resamples for the 210 pairs of 21 methods).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from analysis.paired import N_RESAMPLES, MethodPredictions, compare, seed_effect, task_bootstrap
from analysis.stats import ALPHA, holm
from analysis.tables import task_infos

PAIRS_FILE = "pairs.md"
PAIRS_CSV = "pairs.csv"
COLUMNS = ("task", "model", "better", "worse", "diff", "ci_low", "ci_high", "p", "p_holm",
           "separated", "n_examples", "n_resamples")  # fmt: skip


def pair_tests(
    agg: pd.DataFrame, predictions: Mapping[tuple[str, str, str], MethodPredictions]
) -> pd.DataFrame:
    """Every pair of methods of each (task, model) with predictions on one test set.

    Args:
        agg: Output of ``stats.aggregate`` (means, directions, seed values).
        predictions: ``paired.load_predictions`` of the runs behind ``agg``.

    Returns:
        One row per pair (:data:`COLUMNS`): ``better`` has the better mean, ``diff`` is
        worse - better in raw units with its 95% interval, ``p_holm`` is adjusted over the
        task's pairs and ``separated`` says p_holm < 0.05. Empty when no task has two
        methods with predictions.
    """
    frames = [
        frame
        for (task, model), cells in agg.groupby(["task", "model"], sort=True)
        if (frame := _task_pairs(task, model, cells, predictions)) is not None
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def _task_pairs(
    task: str,
    model: str,
    cells: pd.DataFrame,
    predictions: Mapping[tuple[str, str, str], MethodPredictions],
) -> pd.DataFrame | None:
    higher = bool(cells["higher_is_better"].iloc[0])
    ordered = cells.sort_values("mean", ascending=not higher)  # best first
    preds = {
        label: predictions[(task, model, label)]
        for label in ordered["method_label"]
        if (task, model, label) in predictions
    }
    n_pairs = len(preds) * (len(preds) - 1) // 2
    resamples = max(N_RESAMPLES, math.ceil(2.5 * n_pairs / ALPHA))
    boot = task_bootstrap(task, cells["metric"].iloc[0], preds, n_resamples=resamples)
    if boot is None:
        return None
    preds = {m: p for m, p in preds.items() if p.example_ids == boot.example_ids}
    if len(preds) < 2:
        return None
    seeds = cells.set_index("method_label")["seed_values"].to_dict()
    paired_seeds = seed_effect({m: seeds[m] for m in preds}).shared
    labels = list(preds)  # best mean first, so each pair's first is the better one
    rows = []
    for i, better in enumerate(labels):
        for worse in labels[i + 1 :]:
            c = compare(boot, (better, preds[better]), (worse, preds[worse]),
                        pair_seeds=paired_seeds)  # fmt: skip
            rows.append([task, model, better, worse, c.diff, c.ci_low, c.ci_high, c.p])
    frame = pd.DataFrame(rows, columns=COLUMNS[:8])
    frame["p_holm"] = holm(frame["p"].to_numpy(dtype=float))
    frame["separated"] = frame["p_holm"] < ALPHA
    frame["n_examples"] = len(boot.example_ids)
    frame["n_resamples"] = boot.n_resamples
    return frame


INTRO = (
    "Every pair of methods of a task, compared on the stored test predictions by the "
    "two-level bootstrap over seeds and test examples (the table's test), Holm-corrected "
    "over the task's pairs at 95%. Rows and columns in order of mean score, best first; "
    "a cell reads row vs column: `>` the row is better and separated, `<` worse and "
    "separated, `·` not separated."
)


@dataclass(frozen=True)
class PairMatrix:
    """One task's pairs as a matrix, for either format: who beats whom, best mean first."""

    heading: str
    summary: str
    rows: list[list[str]]  # rank, method, mean, then one mark per method in the same order


def pairs_markdown(pairs: pd.DataFrame, agg: pd.DataFrame) -> str:
    """Per task: how many pairs are separated, and a matrix of which (best mean first)."""
    parts = ["## Which pairs of methods are separated\n\n" + INTRO]
    for matrix in _matrices(pairs, agg):
        n = len(matrix.rows)
        lines = ["| | method | mean | " + " | ".join(str(i + 1) for i in range(n)) + " |",
                 "| --: | :-- | --: |" + " :-: |" * n]  # fmt: skip
        lines += ["| " + " | ".join(row) + " |" for row in matrix.rows]
        parts.append(f"### {matrix.heading}\n\n{matrix.summary}\n\n" + "\n".join(lines))
    return "\n\n".join(parts) + "\n"


def pairs_html(pairs: pd.DataFrame, agg: pd.DataFrame) -> str:
    """The same matrices as :func:`pairs_markdown`, as a section of the report's page."""
    if pairs.empty:
        return ""
    intro = html.escape(INTRO).replace("`", "")
    parts = ['<section id="pairs">', "<h2>Which pairs of methods are separated</h2>",
             f'<p class="legend">{intro}</p>']  # fmt: skip
    for matrix in _matrices(pairs, agg):
        n = len(matrix.rows)
        head = "".join(f"<th>{i + 1}</th>" for i in range(n))
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
            for row in matrix.rows
        )
        parts += [f"<h3>{html.escape(matrix.heading)}</h3>",
                  f"<p>{html.escape(matrix.summary)}</p>",
                  '<table class="comparison pairs"><thead><tr><th></th><th>method</th>'
                  f"<th>mean</th>{head}</tr></thead><tbody>{body}</tbody></table>"]  # fmt: skip
    return "\n".join([*parts, "</section>"])


def _matrices(pairs: pd.DataFrame, agg: pd.DataFrame) -> list[PairMatrix]:
    return [
        _task_matrix(task, model, frame, agg)
        for (task, model), frame in pairs.groupby(["task", "model"], sort=True)
    ]


def _task_matrix(task: str, model: str, frame: pd.DataFrame, agg: pd.DataFrame) -> PairMatrix:
    cells = agg[(agg["task"] == task) & (agg["model"] == model)]
    info = task_infos(cells)[task]
    means = cells.set_index("method_label")["mean"]
    order = list(dict.fromkeys([*frame["better"], *frame["worse"]]))  # best mean first
    separated = {(r.better, r.worse) for r in frame.itertuples() if r.separated}
    width = (frame["ci_high"] - frame["ci_low"]).median() * info.scale
    return PairMatrix(
        heading=f"{task} ({model}; {info.metric}, {int(frame['n_examples'].iloc[0]):,} test "
        f"examples, B = {int(frame['n_resamples'].iloc[0]):,})",
        summary=f"{len(separated)} of {len(frame)} pairs separated; the median pair's 95% "
        f"interval is {width:.1f} wide (in the table's units).",
        rows=[
            [
                str(i + 1),
                row,
                f"{means[row] * info.scale:.1f}",
                *(_mark(row, c, separated) for c in order),
            ]
            for i, row in enumerate(order)
        ],
    )


def _mark(row: str, col: str, separated: set[tuple[str, str]]) -> str:
    if row == col:
        return ""
    return ">" if (row, col) in separated else "<" if (col, row) in separated else "·"
