"""Metrics computed directly with scikit-learn, scipy, seqeval and sacreBLEU.

The `evaluate` package cannot load its metrics offline (its metric scripts live on the Hub,
and it costs seconds to import), so each metric here is a plain function of
``(predictions, references)``. Every metric says whether higher is better and what its best
and worst values are, so analysis and tests never guess.

With network, ``task.metric_impl=evaluate`` scores a task with a Hub metric instead (e.g.
GLUE's own per-task metric): ``task.evaluate`` names it (``path``, ``config_name``, a pinned
``revision``) and maps our metric names to its result keys (``keys``); metrics it does not
give stay built in. :func:`load_hub_metric` imports `evaluate` lazily (``pip install .[hub]``).
"""

from __future__ import annotations

import math
import os
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
        signature: ``signature()`` names the exact scoring configuration where the library
            defines one (sacreBLEU's signature), for the record's metric implementation.
    """

    name: str
    fn: Callable[[Sequence, Sequence], float]
    higher_is_better: bool = True
    best: float = 1.0
    worst: float = 0.0
    signature: Callable[[], str] | None = None

    def implementation(self) -> str:
        """``builtin``, plus the library's signature where it has one."""
        return f"{BUILTIN} {self.signature()}" if self.signature else BUILTIN


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


def _sacrebleu_signature(kind: str) -> Callable[[], str]:
    """sacreBLEU's signature of the scorer :func:`_sacrebleu` uses, one reference per segment
    (e.g. ``sacreBLEU BLEU nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0``), as
    Post 2018 asks every reported score to carry."""

    def signature() -> str:
        from sacrebleu.metrics import BLEU, CHRF

        scorer = BLEU() if kind == "bleu" else CHRF()
        scorer.corpus_score(["a"], [["a"]])  # the signature needs the reference count
        return f"sacreBLEU {kind.upper() if kind == 'bleu' else 'chrF'} {scorer.get_signature()}"

    return signature


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
        Metric("bleu", _sacrebleu("bleu"), best=100.0, signature=_sacrebleu_signature("bleu")),
        Metric("chrf", _sacrebleu("chrf"), best=100.0, signature=_sacrebleu_signature("chrf")),
    ]
}


def compute(names: Sequence[str], preds: Sequence, refs: Sequence) -> dict[str, float]:
    """Computes the named metrics of predictions against references."""
    return {name: METRICS[name].fn(preds, refs) for name in names}


#: The values of ``task.metric_impl``.
BUILTIN, EVALUATE = "builtin", "evaluate"
_FIX = "set task.metric_impl=builtin, or pip install '.[hub]' and go online (HF_HUB_OFFLINE=0)"


def _offline() -> bool:
    flags = (os.environ.get(v, "") for v in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE"))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


@dataclass(frozen=True)
class HubMetric:
    """A loaded `evaluate` metric and which of our metric names it scores.

    Attributes:
        module: what ``evaluate.load`` returned (has ``compute(predictions, references)``).
        keys: our metric name -> the key of its value in ``compute``'s result.
        source: the metric as the record names it, e.g.
            ``evaluate-metric/glue (cola) @ v0.4.6, evaluate 0.4.6``.
    """

    module: object
    keys: dict[str, str]
    source: str

    def compute(self, preds: Sequence, refs: Sequence) -> dict[str, float]:
        result = self.module.compute(predictions=list(preds), references=list(refs))
        return {ours: float(result[theirs]) for ours, theirs in self.keys.items()}


def load_hub_metric(task: str, spec: object, metric_names: Sequence[str]) -> HubMetric:
    """Loads ``task.evaluate``'s Hub metric at its pinned revision (needs network).

    Raises:
        ConfigError: no ``task.evaluate``, a key that is not among ``task.metrics``, the Hub
            switched off (``HF_HUB_OFFLINE=1``), or `evaluate` not installed: each with
            the fix.
    """
    from peftbench.errors import ConfigError

    if not spec or not spec.get("path") or not spec.get("revision") or not spec.get("keys"):
        raise ConfigError(
            f"task {task!r} has task.metric_impl=evaluate but no task.evaluate with path, "
            "revision and keys",
            "set task.metric_impl=builtin, or give task.evaluate (see conf/task/cola.yaml)",
        )
    keys = {str(k): str(v) for k, v in dict(spec.get("keys")).items()}
    unknown = sorted(set(keys) - set(metric_names))
    if unknown:
        raise ConfigError(
            f"task.evaluate.keys names {unknown}, not among task.metrics {list(metric_names)}",
            "map only metrics the task reports",
        )
    if _offline():
        raise ConfigError(
            f"task.metric_impl=evaluate cannot run offline (HF_HUB_OFFLINE=1): evaluate's "
            f"metric scripts live on the Hub ({spec.get('path')})",
            _FIX,
        )
    try:
        import evaluate
    except ImportError:
        raise ConfigError("task.metric_impl=evaluate needs the evaluate package", _FIX) from None
    config_name, revision = spec.get("config_name"), str(spec.get("revision"))
    module = evaluate.load(str(spec.get("path")), config_name, revision=revision)
    named = f"{spec.get('path')}" + (f" ({config_name})" if config_name else "")
    version = getattr(evaluate, "__version__", "unknown")
    return HubMetric(module, keys, f"{named} @ {revision}, evaluate {version}")
