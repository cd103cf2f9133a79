"""Statistics over seeds: mean, sample std, bootstrap CI of the mean, Pareto frontier.

The numbers are plain numpy; pandas is used only to group runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from analysis.records import SUCCESS, SYNTHETIC

GROUP = ("task", "model", "method_label")
# Cost columns averaged over seeds next to the score (NaN when no run recorded them).
COST_COLUMNS = ("trainable_pct", "peak_mem_bytes", "train_time_s", "tokens_per_s", "artifact_bytes")
# A task's runs must agree on these, or their scores are not comparable.
TASK_INVARIANTS = ("primary_name", "primary_split", "higher_is_better", "task_version")
N_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Summary:
    """Mean, sample std, count, range and 95% bootstrap CI of the mean of a set of seeds."""

    mean: float
    std: float
    n: int
    ci_low: float
    ci_high: float
    min: float
    max: float


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean.

    The generator is seeded, so the same values always give the same interval (reports are
    reproducible and diff cleanly).

    Args:
        values: One score per seed; at least one.
        confidence: Coverage of the interval.
        n_resamples: Number of bootstrap resamples.
        seed: Seed of the resampling generator.

    Returns:
        (low, high). With one value both ends equal it: one seed carries no spread estimate.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def summarize(values: Sequence[float] | np.ndarray) -> Summary:
    """Mean, sample std (ddof=1), n and bootstrap CI of the scores of several seeds.

    Args:
        values: One score per seed; at least one.

    Returns:
        The summary (min and max are the extreme seeds). With n=1 the std is NaN (a sample
        std is undefined for one value, and 0 would claim a spread of zero) and the CI
        collapses to the value.
    """
    x = np.asarray(values, dtype=float)
    std = float(x.std(ddof=1)) if x.size > 1 else float("nan")
    low, high = bootstrap_ci(x)
    return Summary(float(x.mean()), std, int(x.size), low, high, float(x.min()), float(x.max()))


def aggregate(runs: pd.DataFrame, *, value: str = "primary_value") -> pd.DataFrame:
    """Aggregates seeds per (task, model, method_label).

    Args:
        runs: Quality runs, i.e. the output of ``records.quality_runs``: success only, no
            synthetic weights, one row per run_id. Anything else raises, so a table can never
            silently mix in failed, synthetic or superseded runs.
        value: Column to summarise.

    Returns:
        One row per group with task, model, method_label, method, budget_pct, metric, split,
        higher_is_better, mean, std, n, ci_low, ci_high, min, max and the seed-mean of each
        cost column.

    Raises:
        ValueError: If ``runs`` is not a quality view, or a task mixes metrics, splits,
            directions or task versions.
    """
    _check_quality_view(runs)
    _check_task_invariants(runs)
    rows = []
    for (task, model, label), group in runs.groupby(list(GROUP), sort=True):
        first = group.iloc[0]
        summary = summarize(group[value].to_numpy(dtype=float))
        rows.append({
            "task": task, "model": model, "method_label": label,
            "method": first["method"], "budget_pct": first["budget_pct"],
            "metric": first["primary_name"], "split": first["primary_split"],
            "higher_is_better": bool(first["higher_is_better"]),
            **asdict(summary),
            **{c: group[c].astype(float).mean() for c in COST_COLUMNS},
        })  # fmt: skip
    return pd.DataFrame(rows)


def _check_quality_view(runs: pd.DataFrame) -> None:
    problems = []
    if (runs["status"] != SUCCESS).any():
        problems.append("non-success runs")
    if (runs["weights"] == SYNTHETIC).any():
        problems.append("synthetic-weight runs")
    if runs["run_id"].duplicated().any():
        problems.append("several records of one run_id")
    if problems:
        raise ValueError(f"aggregate() got {' and '.join(problems)}; pass records.quality_runs(df)")


def _check_task_invariants(runs: pd.DataFrame) -> None:
    for task, group in runs.groupby("task"):
        for column in TASK_INVARIANTS:
            seen = group[column].dropna().unique()
            if len(seen) > 1:
                values = ", ".join(sorted(map(str, seen)))
                raise ValueError(
                    f"task {task!r} mixes {column} ({values}); its scores are not comparable. "
                    "Filter the records (e.g. by sweep) first."
                )


def pareto_front(
    cost: Sequence[float] | np.ndarray,
    score: Sequence[float] | np.ndarray,
    *,
    higher_is_better: bool = True,
) -> np.ndarray:
    """Marks the points no other point beats with a lower or equal cost.

    Args:
        cost: Cost per point (lower is better), e.g. % trainable parameters.
        score: Score per point.
        higher_is_better: Direction of the score.

    Returns:
        Boolean mask in input order. A point is on the frontier when its score is strictly
        better than the score of every point that costs less (or the same and scores more).
    """
    c = np.asarray(cost, dtype=float)
    s = np.asarray(score, dtype=float) * (1.0 if higher_is_better else -1.0)
    on_front = np.zeros(c.size, dtype=bool)
    best = -np.inf
    # Cheapest first; at equal cost the best score first, so the others are dominated.
    for i in np.lexsort((-s, c)):
        if s[i] > best:
            on_front[i] = True
            best = s[i]
    return on_front
