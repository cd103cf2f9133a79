"""Metrics computed directly with scikit-learn, scipy, seqeval and sacreBLEU.

The `evaluate` package cannot load its metrics offline (and costs seconds to import), so each
metric here is a plain function of ``(predictions, references)``. Every metric says whether
higher is better and what its best and worst values are, so analysis and tests never guess.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


@dataclass(frozen=True)
class Metric:
    """A named metric.

    Attributes:
        name: the key used in configs and records (``dev/<name>``).
        fn: ``fn(predictions, references) -> float``.
        higher_is_better: the direction in which a score improves.
        best: the value of a perfect prediction.
        worst: the value of the worst possible prediction.
    """

    name: str
    fn: Callable[[Sequence, Sequence], float]
    higher_is_better: bool = True
    best: float = 1.0
    worst: float = 0.0


def _correlation(kind: str) -> Callable[[Sequence, Sequence], float]:
    """Pearson or Spearman correlation (scipy), as GLUE scores STS-B.

    A correlation is undefined when one side is constant (e.g. an untrained regression head
    that predicts the same value everywhere); it scores 0.0, "no relation found", as
    scikit-learn's MCC does, so model selection never compares against NaN.
    """
    from scipy import stats

    def fn(preds: Sequence, refs: Sequence) -> float:
        if len(set(preds)) < 2 or len(set(refs)) < 2:
            return 0.0
        result = stats.pearsonr(preds, refs) if kind == "pearson" else stats.spearmanr(preds, refs)
        value = float(result.statistic)
        return 0.0 if math.isnan(value) else value

    return fn


def _entity(score: str, *, strict: bool = False) -> Callable[[Sequence, Sequence], float]:
    """Entity-level precision, recall or F1 over BIO tag sequences (seqeval).

    An entity counts as correct only if its type and both boundaries match. The default is
    conlleval's reading of the tags, what CoNLL-2003 and WNUT results are reported with
    (seqeval's default mode reproduces conlleval): a span may open with ``I-`` (an ``I-X``
    after ``O`` or after another type starts an entity of type X). ``strict`` is seqeval's
    strict IOB2 mode: such a span is no entity at all (``entity_f1_strict``, a secondary
    figure; it scores a model that never learnt to emit ``B-`` lower).
    """

    def fn(preds: Sequence[Sequence[str]], refs: Sequence[Sequence[str]]) -> float:
        from seqeval import metrics
        from seqeval.scheme import IOB2

        scorer = {
            "precision": metrics.precision_score,
            "recall": metrics.recall_score,
            "f1": metrics.f1_score,
        }[score]
        mode = {"mode": "strict", "scheme": IOB2} if strict else {}
        return float(
            scorer([list(r) for r in refs], [list(p) for p in preds], zero_division=0, **mode)
        )

    return fn


def _sacrebleu(kind: str) -> Callable[[Sequence[str], Sequence[str]], float]:
    """Corpus BLEU or chrF (sacreBLEU defaults: 13a tokenisation, chrF n=6, beta=2), 0-100.

    Computed on detokenised text against one reference per sentence, as WMT reports them.
    """

    def fn(preds: Sequence[str], refs: Sequence[str]) -> float:
        from sacrebleu.metrics import BLEU, CHRF

        scorer = BLEU() if kind == "bleu" else CHRF()
        return float(scorer.corpus_score(list(preds), [list(refs)]).score)

    return fn


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("accuracy", lambda p, r: float(accuracy_score(r, p))),
        Metric("macro_f1", lambda p, r: float(f1_score(r, p, average="macro", zero_division=0))),
        # F1 of the positive class (label index 1), as GLUE reports it for MRPC and QQP
        Metric("f1", lambda p, r: float(f1_score(r, p, pos_label=1, zero_division=0))),
        Metric("mcc", lambda p, r: float(matthews_corrcoef(r, p)), worst=-1.0),
        Metric("pearson", _correlation("pearson"), worst=-1.0),
        Metric("spearman", _correlation("spearman"), worst=-1.0),
        Metric("entity_precision", _entity("precision")),
        Metric("entity_recall", _entity("recall")),
        Metric("entity_f1", _entity("f1")),
        Metric("entity_precision_strict", _entity("precision", strict=True)),
        Metric("entity_recall_strict", _entity("recall", strict=True)),
        Metric("entity_f1_strict", _entity("f1", strict=True)),
        Metric("bleu", _sacrebleu("bleu"), best=100.0),
        Metric("chrf", _sacrebleu("chrf"), best=100.0),
    ]
}


def compute(names: Sequence[str], preds: Sequence, refs: Sequence) -> dict[str, float]:
    """Computes the named metrics of predictions against references."""
    return {name: METRICS[name].fn(preds, refs) for name in names}
