"""Metrics computed directly with scikit-learn (the `evaluate` package cannot load offline).

Each metric says whether higher is better, so analysis never has to guess.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[Sequence, Sequence], float]
    higher_is_better: bool = True


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("accuracy", lambda p, r: float(accuracy_score(r, p))),
        Metric("macro_f1", lambda p, r: float(f1_score(r, p, average="macro", zero_division=0))),
        Metric("mcc", lambda p, r: float(matthews_corrcoef(r, p))),
    ]
}


def compute(names: Sequence[str], preds: Sequence, refs: Sequence) -> dict[str, float]:
    """Computes the named metrics of predictions against references."""
    return {name: METRICS[name].fn(preds, refs) for name in names}
