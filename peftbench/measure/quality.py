"""Collapse: a run that "succeeded" but learnt nothing a constant could not do (issue 33).

In the 2026-12-02 benchmark 17 runs ended at a constant prediction (dev = test = 0.500 with
macro-F1 0.333, or entity F1 0) and were plain successes; one was a final seed (hedge
Houlsby: 69.2 +- 16.7). A collapsed seed drags a mean and widens a spread for a reason that
has nothing to do with noise, so the record says so and the report lists it.

A run is **collapsed** when, on dev,

1. its predictions were one class at every evaluation (one label; one tag for every word
   of every sentence; one text; one value), or
2. its primary metric never beat the split's constant-prediction baseline: the best score
   any single constant prediction reaches on that split (each label; each tag for every
   word; for regression a constant, whose correlation the metrics define as 0). For
   accuracy "beat" means by more than chance does: the one-sided 95% binomial margin
   ``1.645 * sqrt(b (1 - b) / n)`` above the baseline b on n examples (+0.041 at 0.5 on
   400), so a run that guesses near the majority rate (dev 0.5175 on 400) counts too.

It stays a ``success`` (skip-if-done treats it as done: re-running the same recipe would
collapse again); the record carries ``quality: {"collapsed": ..., "reason": ...,
"baseline": {split: {...}}, "distinct_dev": [...]}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

#: A score must beat the baseline by more than this to count (float noise, not a margin).
EPSILON = 1e-9
#: One-sided 95% normal quantile: accuracy must beat the baseline by more than chance would.
Z_ONE_SIDED_95 = 1.645


def units(task: Any, preds: Sequence) -> set:
    """The distinct predicted "classes" of a split: labels, tags of all words, texts, values."""
    kind = getattr(task, "kind", "")
    if kind == "token_classification":
        return {tag for sentence in preds for tag in sentence}
    if kind == "regression":
        return {round(float(p), 6) for p in preds}
    return {p if isinstance(p, int | float | str) else str(p) for p in preds}


def constant_candidates(task: Any, refs: Sequence) -> list[tuple[str, list]]:
    """Each constant prediction of a split as (its name, the predictions), or [] (translation).

    Classification: every label; NER: every tag, on every word; regression: the mean of the
    references. Translation has no meaningful constant: no baseline, only rule 1 applies.
    """
    kind = getattr(task, "kind", "")
    if kind == "classification":
        names = list(task.labels)
        return [
            (names[c] if c < len(names) else str(c), [c] * len(refs)) for c in range(len(names))
        ]
    if kind == "token_classification":
        return [(tag, [[tag] * len(r) for r in refs]) for tag in task.labels]
    if kind == "regression":
        mean = sum(float(r) for r in refs) / max(1, len(refs))
        return [(f"{mean:.4g}", [mean] * len(refs))]
    return []


def baseline(task: Any, refs: Sequence) -> dict | None:
    """The best primary score a constant prediction reaches on a split, and which constant."""
    best: dict | None = None
    sign = 1.0 if task.higher_is_better else -1.0
    for name, preds in constant_candidates(task, refs):
        value = _primary(task, preds, list(refs))
        if best is None or sign * value > sign * best["value"]:
            best = {"metric": task.primary_metric, "value": value, "prediction": name}
    if best is not None:
        best["margin"] = chance_margin(task.primary_metric, best["value"], len(refs))
    return best


def chance_margin(metric: str, value: float, n: int) -> float:
    """How far above a constant's accuracy a guesser still lands by chance (one-sided 95%
    binomial, normal approximation); 0 for other metrics, whose chance spread has no
    closed form here (entity F1, BLEU, correlations)."""
    if metric != "accuracy" or n < 1:
        return 0.0
    return Z_ONE_SIDED_95 * math.sqrt(value * (1.0 - value) / n)


def _primary(task: Any, preds: list, refs: list) -> float:
    """The primary metric alone (a task's other metrics would cost seqeval passes per tag)."""
    from tasks.metrics import BUILTIN, METRICS

    if task.metric_impl == BUILTIN:
        return float(METRICS[task.primary_metric].fn(preds, refs))
    return float(task.compute_metrics(preds, refs)[task.primary_metric])


class DevWatch:
    """Watches every dev evaluation of the loop: its distinct predictions, its score, and the
    predictions at the selected step. Checkpoint state, so a resumed run keeps all three."""

    def __init__(self, task: Any) -> None:
        self.task = task
        self.evaluations: list[dict] = []  # step, distinct predictions, primary score
        self.selected: dict | None = None  # preds, refs, probs at the selected step
        self.latest: dict | None = None  # the same at the last evaluation

    def observe(self, step: int, dev: dict, outputs: dict, selected: bool) -> None:
        """Called by the loop after each dev evaluation (``selected``: it became the best)."""
        distinct = len(units(self.task, outputs["preds"]))
        value = dev.get(self.task.primary_metric)
        self.evaluations.append({"step": int(step), "distinct": distinct, "value": value})
        self.latest = {k: list(outputs.get(k) or []) for k in ("preds", "refs", "probs")}
        if selected:
            self.selected = self.latest

    @property
    def dev_outputs(self) -> dict | None:
        """Dev predictions of the model the run keeps: at the selected step, else the last
        evaluation's (no step was selectable: the loop keeps the last weights)."""
        return self.selected or self.latest

    def state_dict(self) -> dict:
        same = self.selected is self.latest
        return {
            "evaluations": self.evaluations,
            "selected": None if same else self.selected,
            "latest": self.latest,
            "selected_is_latest": same,
        }

    def load_state_dict(self, state: dict) -> None:
        self.evaluations = list(state["evaluations"])
        self.latest = state["latest"]
        self.selected = self.latest if state["selected_is_latest"] else state["selected"]


def assess(task: Any, watch: DevWatch, test_refs: Sequence | None) -> dict:
    """The record's ``quality`` section: collapsed or not, why, and each split's baseline."""
    dev = watch.latest
    baselines = {"dev": baseline(task, dev["refs"]) if dev is not None else None}
    if test_refs is not None:
        baselines["test"] = baseline(task, test_refs)
    reason = collapse_reason(task, watch.evaluations, baselines["dev"])
    return {
        "collapsed": reason is not None,
        "reason": reason,
        "baseline": baselines,
        "distinct_dev": [e["distinct"] for e in watch.evaluations],
    }


def collapse_reason(
    task: Any, evaluations: Sequence[dict], dev_baseline: dict | None
) -> str | None:
    """Why the run counts as collapsed (one line), or None. See the module docstring."""
    if not evaluations:
        return None
    if all(e["distinct"] <= 1 for e in evaluations):
        return (
            f"dev predictions were one class at every evaluation ({len(evaluations)} evaluations)"
        )
    if dev_baseline is None:
        return None
    sign = 1.0 if task.higher_is_better else -1.0
    scores = [float(e["value"]) for e in evaluations if _finite(e["value"])]
    margin = float(dev_baseline.get("margin") or 0.0)
    if scores and all(sign * (s - dev_baseline["value"]) <= margin + EPSILON for s in scores):
        best = max(scores) if sign > 0 else min(scores)
        by_chance = f" by more than chance (+{margin:.4f})" if margin else ""
        return (
            f"dev {dev_baseline['metric']} never beat the constant prediction "
            f"{dev_baseline['prediction']!r} ({dev_baseline['value']:.4f}){by_chance}; "
            f"best {best:.4f}"
        )
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
