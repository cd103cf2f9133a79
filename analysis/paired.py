"""Example-level comparisons of two recipes on one task, from per-example predictions.

A run may store its predictions beside its record (``<record stem>.predictions.parquet``,
columns ``split``, ``example_id``, ``gold``, ``pred``, ``prob``; the record's
``predictions`` section names the file and its sha256). From them this module compares two
recipes on one task:

- **The difference of the primary metric with a 95% interval**, from a two-level bootstrap
  over seeds and test examples. Seeds and test examples are *crossed*, not nested: every
  seed of every method scores the same test sentences. The scheme is the pigeonhole
  bootstrap for crossed random factors (Owen, "The pigeonhole bootstrap", Ann. Appl. Stat.
  1(2), 2007): each resample draws test examples with replacement once, and the same drawn
  examples are used for every seed of both methods (the pairing over examples of Koehn's
  paired bootstrap, EMNLP 2004, and of Dror et al., ACL 2018), and draws seeds with
  replacement. Resampling both sources of variance is what Bouthillier et al. (MLSys 2021,
  "Accounting for variance in machine learning benchmarks") ask of a benchmark comparison;
  Owen shows the scheme is mildly conservative (the seed x example interaction is counted
  in both factors). Seeds are drawn *independently* for the two methods unless the task's
  runs show a seed effect shared across methods (:func:`seed_effect`): a seed number
  fixes data order and head initialisation, but the offline benchmark's two-way ANOVA gave
  p = 0.17-0.98 for a shared effect (issue 33), and pairing without one adds no precision.
  With S seeds a plain bootstrap of the seed mean has variance (S-1)/S of the unbiased
  s^2/S (2/3 at three seeds); the seed weights are rescaled by sqrt(S/(S-1)) so that it
  is unbiased (the rescaling bootstrap of Rao & Wu, JASA 83, 1988). Even so, three seeds
  pin the seed variance down poorly; the interval is a percentile interval and does not
  have Student's t_2 tails.
- **Corpus-level metrics are recomputed on every resample**, never averaged per example:
  each metric is split into per-example sufficient statistics (entity counts for seqeval's
  entity F1, sacreBLEU's own n-gram statistics for BLEU and chrF, a confusion matrix for
  Matthews and macro-F1, moments for Pearson), a resample is a weighted sum of them (one
  matrix product for all resamples), and the metric is evaluated on the sum exactly as
  ``tasks/metrics.py`` does (the tests check equality with its functions).
- **McNemar's test** for accuracy, pooled over seeds (exact binomial below 25 discordant
  pairs, else chi-square with continuity correction, as statsmodels' ``mcnemar``). It is
  conditional on the trained models (it sees test-set noise, not seed noise), so it is
  reported beside the bootstrap, which decides the marks.
- **Power** (:func:`power`): the smallest difference the present seeds x test examples
  detect with 80% power at the 95% level, from the observed seed and example variances,
  and how many seeds or test examples a chosen difference would need.

Without predictions, :func:`column_tests` compares seed scores: paired over seeds only when
:func:`seed_effect` finds a shared seed effect, else Welch's t.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from peftbench.records import store
from peftbench.records.predictions import PredictionsError

CONFIDENCE = 0.95
POWER = 0.80
N_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
SPLIT = "test"
PREDICTION_COLUMNS = ("split", "example_id", "gold", "pred", "prob")
# The usual rule of thumb: the exact binomial below 25 discordant pairs, the chi-square
# approximation from there on (statsmodels' ``mcnemar`` leaves the choice to the caller).
MCNEMAR_EXACT_BELOW = 25
# A shared seed effect justifies pairing by seed when the two-way ANOVA finds it at this
# level: a preliminary test that decides a model term ("sometimes pool"), not a claim of an
# effect, for which 0.25 is the customary level (Bozivich, Bancroft & Hartley, Ann. Math.
# Statist. 27, 1956). The offline benchmark's tasks gave p = 0.17-0.98 (issue 33).
SEED_EFFECT_ALPHA = 0.25

# Names of the tests, as captions and the CSV's test column write them.
TEST_BOOTSTRAP = "paired bootstrap (seeds x examples)"
TEST_MCNEMAR_EXACT = "McNemar exact"
TEST_MCNEMAR_CHI2 = "McNemar chi2"
TEST_WELCH = "Welch t"
TEST_PAIRED_T = "paired t"


# ------------------------------------------------------------------------------ reading


def read_predictions(
    record_path: str | Path, record: Mapping | None = None, *, split: str = SPLIT
) -> pd.DataFrame | None:
    """The predictions of one run on one split, checked against the record's sha256.

    Args:
        record_path: The record's JSON file; the predictions file is resolved against its
            folder.
        record: The parsed record (read from ``record_path`` when None).
        split: ``"test"`` or ``"dev"``.

    Returns:
        Columns example_id, gold, pred, prob, sorted by example_id; None when the record
        names no predictions file.

    Raises:
        PredictionsError: The file is missing, its sha256 differs from the record's, or
            its columns are not the contract's -- one line naming the file and the fix.
    """
    record_path = Path(record_path)
    if record is None:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    frame = store.load_predictions(record_path, record)  # None, or its sha256 checked
    if frame is None:
        return None
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise PredictionsError(
            f"predictions of {record_path.name} lack columns {missing}; rerun the run"
        )
    frame = frame[frame["split"] == split].drop(columns="split")
    if frame["example_id"].duplicated().any():
        raise PredictionsError(
            f"predictions of {record_path.name} repeat an example_id on {split}; rerun the run"
        )
    return frame.sort_values("example_id", kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class MethodPredictions:
    """One recipe's test predictions on one task: one column of predictions per seed.

    ``gold`` and every ``preds[seed]`` are in the order of ``example_ids``.
    """

    example_ids: tuple[str, ...]
    gold: list
    preds: dict[int, list] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return sorted(self.preds)


def load_predictions(
    runs: pd.DataFrame, *, split: str | None = None
) -> dict[tuple[str, str, str], MethodPredictions]:
    """The predictions of every (task, model, method_label) whose seeded runs all have them.

    Args:
        runs: Quality runs (``frame.quality_runs``) with ``path`` and ``seed`` columns.
        split: The split compared; default: the runs' primary split (test for finals, dev
            for sealed tuning runs, whose files hold dev rows only).

    Returns:
        Per group, its :class:`MethodPredictions`. A group with a run that has no
        predictions file, or whose runs scored different examples, is left out (its
        comparisons fall back to the seed scores).

    Raises:
        PredictionsError: A predictions file was altered or is unreadable.
    """
    out = {}
    for key, group in runs.groupby(["task", "model", "method_label"], sort=True):
        seeded = group[group["seed"].notna()]
        on = split or _primary_split(group)
        frames = {}
        for seed, path in zip(seeded["seed"].astype(int), seeded["path"], strict=True):
            frame = read_predictions(path, split=on) if isinstance(path, str) else None
            if frame is None:
                break
            frames[seed] = frame
        if not frames or len(frames) < len(seeded):
            continue
        first = next(iter(frames.values()))
        same = all(f["example_id"].equals(first["example_id"]) for f in frames.values())
        if not same or first.empty:
            continue
        if not all(f["gold"].equals(first["gold"]) for f in frames.values()):
            raise PredictionsError(
                f"{'/'.join(key)}: the seeds' predictions give different gold labels for one "
                "example_id; the task changed between runs -- rerun them at one task version"
            )
        out[key] = MethodPredictions(
            example_ids=tuple(first["example_id"]),
            gold=first["gold"].tolist(),
            preds={seed: f["pred"].tolist() for seed, f in frames.items()},
        )
    return out


def _primary_split(group: pd.DataFrame) -> str:
    splits = group["primary_split"].dropna() if "primary_split" in group else []
    return str(splits.iloc[0]) if len(splits) else SPLIT


# ------------------------------------------------------------------ metric decompositions


@dataclass(frozen=True)
class Decomposition:
    """A corpus metric as per-example sufficient statistics and a function of their sum.

    ``stats(gold, pred)`` is an (n examples, d) array; ``score(sums)`` maps (B, d) sums of
    rows to B metric values, equal to ``tasks.metrics.METRICS[name].fn`` of those examples.
    """

    name: str
    stats: Callable[[Sequence, Sequence], np.ndarray]
    score: Callable[[np.ndarray], np.ndarray]


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _accuracy() -> Decomposition:
    def stats_(gold: Sequence, pred: Sequence) -> np.ndarray:
        right = np.asarray(pred, dtype=object) == np.asarray(gold, dtype=object)
        return np.stack([right.astype(float), np.ones(len(gold))], axis=1)

    return Decomposition("accuracy", stats_, lambda s: _safe_div(s[:, 0], s[:, 1]))


def _confusion(labels: Sequence) -> Callable[[Sequence, Sequence], np.ndarray]:
    index = {label: i for i, label in enumerate(labels)}
    k = len(labels)

    def stats_(gold: Sequence, pred: Sequence) -> np.ndarray:
        cell = np.array([index[g] * k + index[p] for g, p in zip(gold, pred, strict=True)])
        out = np.zeros((len(cell), k * k))
        out[np.arange(len(cell)), cell] = 1.0
        return out

    return stats_


def _mcc(labels: Sequence) -> Decomposition:
    """Matthews' coefficient from the confusion matrix, as scikit-learn computes it."""
    k = len(labels)

    def score(sums: np.ndarray) -> np.ndarray:
        c = sums.reshape(-1, k, k)  # [true, pred]
        t, p = c.sum(axis=2), c.sum(axis=1)
        correct, total = np.trace(c, axis1=1, axis2=2), c.sum(axis=(1, 2))
        cov_tp = correct * total - (t * p).sum(axis=1)
        cov_pp = total**2 - (p * p).sum(axis=1)
        cov_tt = total**2 - (t * t).sum(axis=1)
        den = cov_tt * cov_pp
        return _safe_div(cov_tp, np.sqrt(np.where(den > 0, den, 1.0)) * (den > 0))

    return Decomposition("mcc", _confusion(labels), score)


def _macro_f1(labels: Sequence) -> Decomposition:
    """Macro F1 over the labels present in gold or predictions of the resample (sklearn)."""
    k = len(labels)

    def score(sums: np.ndarray) -> np.ndarray:
        c = sums.reshape(-1, k, k)
        tp = np.diagonal(c, axis1=1, axis2=2)
        support = c.sum(axis=2) + c.sum(axis=1)  # gold + predicted per class
        present = support > 0
        f1 = _safe_div(2 * tp, support)
        return _safe_div((f1 * present).sum(axis=1), present.sum(axis=1))

    return Decomposition("macro_f1", _confusion(labels), score)


def _pearson() -> Decomposition:
    """Pearson's r from moments; 0 when a side is constant, as ``tasks.metrics`` scores it."""

    def stats_(gold: Sequence, pred: Sequence) -> np.ndarray:
        x, y = np.asarray(pred, dtype=float), np.asarray(gold, dtype=float)
        x, y = x - x.mean(), y - y.mean()  # centred: the moments lose no precision
        return np.stack([np.ones_like(x), x, y, x * x, y * y, x * y], axis=1)

    def score(s: np.ndarray) -> np.ndarray:
        n, sx, sy, sxx, syy, sxy = s.T
        vx, vy = n * sxx - sx**2, n * syy - sy**2
        ok = (vx > 1e-12 * np.maximum(n * sxx, 1e-300)) & (vy > 1e-12 * np.maximum(n * syy, 1e-300))
        return _safe_div(n * sxy - sx * sy, np.sqrt(np.where(ok, vx * vy, 1.0)) * ok)

    return Decomposition("pearson", stats_, score)


def _entity(name: str) -> Decomposition:
    """seqeval's micro entity scores from per-sentence (correct, predicted, gold) counts.

    seqeval reads a list of sentences as one sequence with an ``O`` between sentences, so no
    entity crosses a sentence and the corpus counts are the sums of per-sentence counts.
    """
    strict = name.endswith("_strict")
    kind = name.removeprefix("entity_").removesuffix("_strict")

    gold_cache: dict[tuple, list[set]] = {}  # every run of a task shares one gold list

    def stats_(gold: Sequence, pred: Sequence) -> np.ndarray:
        key = tuple(gold)
        if key not in gold_cache:
            gold_cache.clear()
            gold_cache[key] = _sentence_entities([_tags(g) for g in gold], strict=strict)
        true = gold_cache[key]
        guess = _sentence_entities([_tags(p) for p in pred], strict=strict)
        rows = [(len(t & g), len(g), len(t)) for t, g in zip(true, guess, strict=True)]
        return np.asarray(rows, dtype=float).reshape(-1, 3)

    def score(s: np.ndarray) -> np.ndarray:
        correct, guessed, true = s.T
        precision, recall = _safe_div(correct, guessed), _safe_div(correct, true)
        if kind == "precision":
            return precision
        if kind == "recall":
            return recall
        return _safe_div(2 * precision * recall, precision + recall)

    return Decomposition(name, stats_, score)


def _sentence_entities(sentences: list[list[str]], *, strict: bool) -> list[set]:
    """Each sentence's entities as seqeval finds them, from one call over the corpus.

    Default mode: seqeval's ``get_entities`` joins the sentences with an ``O`` after each
    (``seqeval/metrics/sequence_labeling.py``), so an entity's start tells its sentence.
    """
    if strict:
        from seqeval.scheme import IOB2, Entities

        found = Entities(sentences, IOB2).entities
        return [{e.to_tuple()[1:] for e in sentence} for sentence in found]
    from seqeval.metrics.sequence_labeling import get_entities

    out: list[set] = [set() for _ in sentences]
    starts = np.cumsum([0] + [len(s) + 1 for s in sentences])
    found = get_entities([list(s) for s in sentences])
    where = np.searchsorted(starts, [begin for _, begin, _ in found], side="right") - 1
    for (kind, begin, end), i in zip(found, where.tolist(), strict=True):
        out[i].add((kind, begin - int(starts[i]), end - int(starts[i])))
    return out


def _tags(value: object) -> list[str]:
    """Tags per word: the contract joins them by single spaces; a list is taken as is."""
    if isinstance(value, str):
        return value.split(" ") if value else []
    return [str(t) for t in value]


def _sacrebleu(name: str) -> Decomposition:
    """BLEU or chrF from sacreBLEU's own segment statistics and its own final formula.

    ``_extract_corpus_statistics`` and ``_compute_score_from_stats`` are what sacreBLEU's
    paired bootstrap (``sacrebleu/significance.py``) uses for the same purpose.
    """
    from sacrebleu.metrics import BLEU, CHRF

    scorer = BLEU() if name == "bleu" else CHRF()

    def stats_(gold: Sequence, pred: Sequence) -> np.ndarray:
        segments = scorer._extract_corpus_statistics(
            [str(p) for p in pred], [[str(g) for g in gold]]
        )
        return np.asarray(segments, dtype=float)

    def score(sums: np.ndarray) -> np.ndarray:
        if name == "bleu" and scorer.max_ngram_order == 4 and scorer.smooth_method == "exp":
            return _bleu(sums)
        rows = np.rint(sums).astype(np.int64).tolist()
        return np.array([scorer._compute_score_from_stats(row).score for row in rows])

    return Decomposition(name, stats_, score)


def _bleu(sums: np.ndarray) -> np.ndarray:
    """sacreBLEU's ``BLEU.compute_bleu`` (exp smoothing, 4-grams, no effective order) for
    every row at once: a Python call per resample costs seconds per method.

    Rows are [hyp length, ref length, correct 1-4, total 1-4]. As there: brevity penalty
    exp(1 - r / c) when c < r; a zero count of matches at order n, with n-grams guessed,
    gives 100 / (2^k total) with k the zero orders so far; orders from the first without
    guesses on count as log 0 = -9999999999; no match at all scores 0.
    """
    sys_len, ref_len = sums[:, 0], sums[:, 1]
    correct, total = sums[:, 2:6], sums[:, 6:10]
    short = sys_len < ref_len
    bp = np.ones(len(sums))
    bp[short] = np.where(
        sys_len[short] > 0, np.exp(1 - ref_len[short] / np.maximum(sys_len[short], 1)), 0.0
    )
    precisions = np.zeros_like(correct, dtype=float)
    smooth = np.ones(len(sums))
    alive = np.ones(len(sums), dtype=bool)
    for n in range(4):
        alive &= total[:, n] > 0
        missed = alive & (correct[:, n] == 0)
        smooth = np.where(missed, smooth * 2, smooth)
        safe = np.where(alive, total[:, n], 1.0)
        value = np.where(missed, 100.0 / (smooth * safe), 100.0 * correct[:, n] / safe)
        precisions[:, n] = np.where(alive, value, 0.0)
    logs = np.where(precisions > 0, np.log(np.where(precisions > 0, precisions, 1.0)), -9999999999)
    score = bp * np.exp(logs.sum(axis=1) / 4)
    return np.where(correct.any(axis=1), score, 0.0)


def decomposition(metric: str, labels: Sequence = ()) -> Decomposition | None:
    """The decomposition of a metric of ``tasks.metrics``; None for one it has none of.

    Args:
        metric: The task's primary metric name.
        labels: Every label of the task's gold and predictions (for the confusion-matrix
            metrics).
    """
    if metric == "accuracy":
        return _accuracy()
    if metric == "mcc":
        return _mcc(sorted(labels, key=str))
    if metric == "macro_f1":
        return _macro_f1(sorted(labels, key=str))
    if metric == "pearson":
        return _pearson()
    if metric.startswith("entity_"):
        return _entity(metric)
    if metric in ("bleu", "chrf"):
        return _sacrebleu(metric)
    return None


# ---------------------------------------------------------------------------- bootstrap


def _rng(*parts: str | int) -> np.random.Generator:
    """A generator fixed by names, so a comparison does not depend on the order of others."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return np.random.default_rng([BOOTSTRAP_SEED, int.from_bytes(digest[:8], "little")])


def example_counts(n_examples: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(B, n) multiplicities of the examples in B resamples with replacement."""
    return rng.multinomial(n_examples, np.full(n_examples, 1.0 / n_examples), size=n_resamples)


def seed_weights(n_seeds: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(B, S) weights of the seeds in B resamples: the bootstrap mean's weights, rescaled.

    A bootstrap mean of S values has variance (S-1)/S s^2/S; centring each draw's weights on
    1/S and scaling the deviation by sqrt(S/(S-1)) makes it s^2/S (Rao & Wu 1988). The
    weights still sum to 1 (a few may be negative). One seed: weight 1, no seed variance.
    """
    if n_seeds == 1:
        return np.ones((n_resamples, 1))
    draws = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_resamples)
    base = 1.0 / n_seeds
    return base + math.sqrt(n_seeds / (n_seeds - 1)) * (draws / n_seeds - base)


@dataclass
class TaskBootstrap:
    """The example resamples of one task, and each method's per-seed scores on them.

    Every method is scored on the same resampled examples (the pairing over examples);
    each method's (B, S) matrix is computed once and reused by all its comparisons.
    """

    task: str
    metric: Decomposition
    example_ids: tuple[str, ...]
    counts: np.ndarray  # (B, n examples)
    _scores: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        task: str,
        metric: str,
        predictions: Mapping[str, MethodPredictions],
        *,
        n_resamples: int = N_RESAMPLES,
    ) -> TaskBootstrap | None:
        """None when the metric has no decomposition or the methods scored other examples."""
        if not predictions:
            return None
        first = next(iter(predictions.values()))
        if any(p.example_ids != first.example_ids for p in predictions.values()):
            return None
        labels: set = set(first.gold)
        for p in predictions.values():
            for values in p.preds.values():
                labels.update(values)
        dec = decomposition(metric, labels) if metric else None
        if dec is None:
            return None
        counts = example_counts(len(first.example_ids), n_resamples, _rng(task, "examples"))
        return cls(task, dec, first.example_ids, counts.astype(float))  # float: BLAS matmul

    @property
    def n_resamples(self) -> int:
        return self.counts.shape[0]

    def scores(self, method: str, predictions: MethodPredictions) -> tuple[np.ndarray, np.ndarray]:
        """(observed (S,), resampled (B, S)): the metric of each seed on all / drawn examples."""
        if method not in self._scores:
            gold, preds = predictions.gold, predictions.preds
            xs = [self.metric.stats(gold, preds[seed]) for seed in predictions.seeds]
            sums = np.split(self.counts @ np.hstack(xs), len(xs), axis=1)  # one pass over counts
            observed = [self.metric.score(x.sum(axis=0, keepdims=True))[0] for x in xs]
            resampled = np.stack([self.metric.score(s) for s in sums], axis=1)
            self._scores[method] = (np.asarray(observed), resampled)
        return self._scores[method]


@dataclass(frozen=True)
class Comparison:
    """The difference ``method - reference`` of the primary metric on one task.

    ``p`` is the two-sided bootstrap p-value (the level at which the percentile interval
    just excludes 0); ``mcnemar_p`` is NaN for metrics other than accuracy.
    """

    reference: str
    method: str
    test: str
    diff: float
    ci_low: float
    ci_high: float
    p: float
    n_seeds: int  # of the method (the reference's may differ)
    n_examples: int
    paired_seeds: bool
    example_var: float  # bootstrap variance of the difference from examples alone
    seed_var_unit: float  # s_a^2 + s_b^2, the seed variances of the scores on all examples
    mcnemar_test: str = ""
    mcnemar_p: float = math.nan
    discordant: tuple[int, int] = (0, 0)


def compare(
    boot: TaskBootstrap,
    reference: tuple[str, MethodPredictions],
    method: tuple[str, MethodPredictions],
    *,
    pair_seeds: bool = False,
) -> Comparison:
    """Two-level bootstrap of ``method - reference`` (module doc), plus McNemar for accuracy.

    Args:
        boot: The task's example resamples.
        reference: (label, predictions) of the reference (the column's best).
        method: (label, predictions) of the other method.
        pair_seeds: Draw the same seeds for both (only when they have the same seeds and a
            shared seed effect was found); else seeds are drawn independently.

    Returns:
        The comparison.
    """
    (ref_name, ref), (name, other) = reference, method
    obs_r, res_r = boot.scores(ref_name, ref)
    obs_m, res_m = boot.scores(name, other)
    b = boot.n_resamples
    paired = pair_seeds and ref.seeds == other.seeds
    if paired:
        w_r = w_m = seed_weights(len(ref.seeds), b, _rng(boot.task, "seeds", ref_name, name))
    else:
        w_r = seed_weights(len(ref.seeds), b, _rng(boot.task, "seeds", ref_name))
        w_m = seed_weights(len(other.seeds), b, _rng(boot.task, "seeds", name))
    draws = (w_m * res_m).sum(axis=1) - (w_r * res_r).sum(axis=1)
    diff = float(obs_m.mean() - obs_r.mean())
    alpha = 1 - CONFIDENCE
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    p = min(1.0, 2 * (1 + min(int((draws <= 0).sum()), int((draws >= 0).sum()))) / (b + 1))
    example_var = float(np.var(res_m.mean(axis=1) - res_r.mean(axis=1), ddof=1))
    seed_var_unit = _var(obs_m) + _var(obs_r)
    result = Comparison(
        ref_name, name, TEST_BOOTSTRAP, diff, float(low), float(high), p, len(other.seeds),
        len(boot.example_ids), paired, example_var, seed_var_unit,
    )  # fmt: skip
    if boot.metric.name == "accuracy":
        return _with_mcnemar(result, ref, other)
    return result


def _var(values: np.ndarray) -> float:
    return float(np.var(values, ddof=1)) if values.size > 1 else 0.0


def _with_mcnemar(
    result: Comparison, ref: MethodPredictions, other: MethodPredictions
) -> Comparison:
    """McNemar pooled over seeds: the i-th seed of one method against the i-th of the other."""
    gold = np.asarray(ref.gold, dtype=object)
    only_ref = only_other = 0
    for s_ref, s_other in zip(ref.seeds, other.seeds, strict=False):
        right_ref = np.asarray(ref.preds[s_ref], dtype=object) == gold
        right_other = np.asarray(other.preds[s_other], dtype=object) == gold
        only_ref += int((right_ref & ~right_other).sum())
        only_other += int((~right_ref & right_other).sum())
    test, p = mcnemar(only_ref, only_other)
    return _replace(result, mcnemar_test=test, mcnemar_p=p, discordant=(only_ref, only_other))


def _replace(result: Comparison, **changes: object) -> Comparison:
    import dataclasses

    return dataclasses.replace(result, **changes)


def mcnemar(b: int, c: int) -> tuple[str, float]:
    """McNemar's test of b pairs right only by one method against c right only by the other.

    Exact (two-sided binomial, p = min(1, 2 P(X <= min(b, c))), X ~ Bin(b + c, 1/2)) below
    :data:`MCNEMAR_EXACT_BELOW` discordant pairs; from there on chi-square with one degree
    of freedom and the continuity correction, (|b - c| - 1)^2 / (b + c). Both are what
    statsmodels' ``mcnemar`` computes (``exact=True`` / ``exact=False, correction=True``).

    Returns:
        (test name, p-value); p = 1 when no pair is discordant.
    """
    n = b + c
    if n == 0:
        return TEST_MCNEMAR_EXACT, 1.0
    if n < MCNEMAR_EXACT_BELOW:
        return TEST_MCNEMAR_EXACT, float(min(1.0, 2 * stats.binom.cdf(min(b, c), n, 0.5)))
    statistic = (abs(b - c) - 1) ** 2 / n
    return TEST_MCNEMAR_CHI2, float(stats.chi2.sf(statistic, 1))


# ------------------------------------------------------------------ seed-level fallbacks


@dataclass(frozen=True)
class SeedEffect:
    """Two-way ANOVA (methods x seeds, one run per cell) F test of a seed effect."""

    f: float
    p: float
    n_methods: int
    n_seeds: int

    @property
    def shared(self) -> bool:
        """Whether pairing by seed is justified: p below :data:`SEED_EFFECT_ALPHA`."""
        return not math.isnan(self.p) and self.p < SEED_EFFECT_ALPHA


def seed_effect(seed_values: Mapping[str, Mapping[int, float]]) -> SeedEffect:
    """Is there a seed effect shared by the methods of one task?

    The methods that ran every seed of the most common seed set form a complete block;
    the additive model score = method + seed + error gives F = MS_seed / MS_error with
    (S - 1, (m - 1)(S - 1)) degrees of freedom. NaN when fewer than 2 methods x 2 seeds.
    """
    seed_sets = [frozenset(v) for v in seed_values.values() if len(v) >= 2]
    if not seed_sets:
        return SeedEffect(math.nan, math.nan, 0, 0)
    common = max(set(seed_sets), key=lambda s: (sum(s <= t for t in seed_sets) * len(s), len(s)))
    seeds = sorted(common)
    rows = [[v[s] for s in seeds] for v in seed_values.values() if common <= set(v)]
    y = np.asarray(rows, dtype=float)
    m, s = y.shape
    if m < 2 or s < 2:
        return SeedEffect(math.nan, math.nan, m, s)
    grand = y.mean()
    ss_seed = m * ((y.mean(axis=0) - grand) ** 2).sum()
    resid = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0, keepdims=True) + grand
    ss_err = (resid**2).sum()
    df_seed, df_err = s - 1, (m - 1) * (s - 1)
    if ss_err == 0:
        return SeedEffect(math.inf if ss_seed > 0 else math.nan, 0.0 if ss_seed > 0 else 1.0, m, s)
    f = (ss_seed / df_seed) / (ss_err / df_err)
    return SeedEffect(float(f), float(stats.f.sf(f, df_seed, df_err)), m, s)


def welch_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Welch's t test of two sets of seed scores: (statistic, two-sided p); NaN below 2+2."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2 or y.size < 2:
        return math.nan, math.nan
    if np.ptp(x) == 0 and np.ptp(y) == 0:  # no spread: equal means say 1, else certain
        same = np.round(x.mean() - y.mean(), 12) == 0
        return (0.0, 1.0) if same else (math.copysign(math.inf, x.mean() - y.mean()), 0.0)
    result = stats.ttest_ind(x, y, equal_var=False)
    return float(result.statistic), float(result.pvalue)


# --------------------------------------------------------------------------------- power


@dataclass(frozen=True)
class Power:
    """What the present design can detect on one task (module doc).

    ``mdd``: the smallest difference from the reference detected with :data:`POWER` power
    by a two-sided test at the 95% level, (z_0.975 + z_0.80) * SE, SE^2 = seed_var +
    example_var. ``seeds_needed`` / ``examples_needed``: for ``target``, the seeds per
    method at the present test size, or the test examples at the present seeds (inf: the
    other source alone is already too noisy; NaN: not estimable without predictions).
    """

    mdd: float
    target: float
    seeds_needed: float
    examples_needed: float
    n_seeds: int
    n_examples: int  # 0 without predictions


def z_sum(power: float = POWER, confidence: float = CONFIDENCE) -> float:
    """z_{1 - alpha/2} + z_{power}: 1.960 + 0.842 = 2.802 at the defaults."""
    return float(stats.norm.ppf(1 - (1 - confidence) / 2) + stats.norm.ppf(power))


def power(
    seed_var_unit: float, example_var_unit: float, n_seeds: int, n_examples: int, target: float
) -> Power:
    """Minimum detectable difference and the design a target difference would need.

    Args:
        seed_var_unit: s_a^2 + s_b^2 (variance of one seed's score, both methods summed);
            the difference's seed part is this over the seeds per method.
        example_var_unit: n_examples x the example part of the difference's variance (it
            shrinks as 1 / test examples; held fixed as seeds grow, which is conservative).
        n_seeds: Seeds per method now.
        n_examples: Test examples now (0: no predictions, no example part).
        target: The difference to plan for (raw units, positive).
    """
    z = z_sum()
    example_part = example_var_unit / n_examples if n_examples else 0.0
    mdd = z * math.sqrt(seed_var_unit / n_seeds + example_part)
    budget = (target / z) ** 2
    seeds = _needed(seed_var_unit, budget - example_part)
    examples = (
        _needed(example_var_unit, budget - seed_var_unit / n_seeds) if n_examples else math.nan
    )
    return Power(mdd, target, seeds, examples, n_seeds, n_examples)


def _needed(variance_unit: float, room: float) -> float:
    if variance_unit == 0:
        return 1.0
    return float(math.ceil(variance_unit / room)) if room > 0 else math.inf


# ----------------------------------------------------------------- a column of a table

#: Columns of :func:`column_tests`' frame, one row per compared method.
TEST_COLUMNS = (
    "reference", "test", "n", "statistic", "p", "p_holm", "diff", "ci_low", "ci_high",
    "n_examples", "mcnemar_test", "mcnemar_p", "seed_var_unit", "example_var_unit",
    "seed_ci_low", "seed_ci_high",
)  # fmt: skip


def column_tests(
    seed_values: Mapping[str, Mapping[int, float]],
    reference: str,
    others: Sequence[str],
    *,
    task: str = "",
    metric: str = "",
    predictions: Mapping[str, MethodPredictions] | None = None,
    effect: SeedEffect | None = None,
    n_resamples: int = N_RESAMPLES,
    boot: TaskBootstrap | None = None,
) -> pd.DataFrame:
    """Every method of ``others`` against ``reference`` on one task, Holm-corrected.

    Where both have predictions, the example-level bootstrap (:func:`compare`); else the
    seed scores: the paired test of ``stats.paired_test`` when ``effect`` finds a shared
    seed effect, Welch's t otherwise. Methods that cannot be tested (fewer than 2 seeds
    on a side, none shared when paired) get p NaN and stay out of Holm's family: the
    claim "not distinguishable from the reference" is made for each method of the column,
    so the family is the column; Holm controls its family-wise error under any dependence
    (the comparisons share the reference, so they are dependent).

    Args:
        seed_values: Per method label, its dict seed -> primary score.
        reference: The method compared against.
        others: The methods compared with it.
        task: The task (seeds the resampling).
        metric: The task's primary metric.
        predictions: Per method label, its test predictions (absent: none).
        effect: The task's :func:`seed_effect` (computed when None).
        n_resamples: Bootstrap resamples.
        boot: The task's resamples and scores, shared by the columns of one task
            (:func:`task_bootstrap`); built here when None or of other examples.

    Returns:
        One row per method of ``others``, columns :data:`TEST_COLUMNS`; ``diff`` is
        method - reference in raw units; ``seed_ci_low`` / ``seed_ci_high`` the interval
        of the seed-level test (the same as ci_low / ci_high where that decided), to show
        how much the examples narrow it.
    """
    from analysis.stats import holm, paired_test  # stats imports frame; keep this module light

    predictions = predictions or {}
    effect = effect or seed_effect(seed_values)
    ref = predictions.get(reference)
    shared = {
        m: predictions[m]
        for m in [reference, *others]
        if ref is not None and m in predictions and predictions[m].example_ids == ref.example_ids
    }  # methods scored on other examples are compared by their seed scores
    if len(shared) < 2:
        boot = None
    elif boot is None or boot.example_ids != ref.example_ids:
        boot = TaskBootstrap.build(task, metric, shared, n_resamples=n_resamples)
    if boot is not None:
        _check_recomputed(boot, shared, seed_values)
    rows = []
    for method in others:
        seed_row = _seed_level(
            seed_values[reference], seed_values[method], paired=effect.shared,
            paired_test=paired_test,
        )  # fmt: skip
        seed_ci = seed_row[5:7]  # the seed-level interval, for width comparisons
        if boot is not None and method in shared:
            c = compare(
                boot, (reference, shared[reference]), (method, shared[method]),
                pair_seeds=effect.shared,
            )  # fmt: skip
            rows.append([
                reference, c.test, c.n_seeds, math.nan, c.p, c.diff, c.ci_low, c.ci_high,
                c.n_examples, c.mcnemar_test, c.mcnemar_p,
                c.seed_var_unit, c.example_var * c.n_examples, *seed_ci,
            ])  # fmt: skip
            continue
        rows.append([reference, *seed_row, *seed_ci])
    frame = pd.DataFrame(
        rows, index=pd.Index(list(others), name="method_label"),
        columns=[c for c in TEST_COLUMNS if c != "p_holm"],
    )  # fmt: skip
    frame.insert(5, "p_holm", holm(frame["p"].to_numpy(dtype=float)) if rows else [])
    return frame


#: Largest difference tolerated between a record's score and its predictions' rescoring.
RESCORE_TOLERANCE = 1e-6


class RescoreWarning(UserWarning):
    """Predictions rescored by ``analysis.paired`` do not give the record's primary value."""


def _check_recomputed(
    boot: TaskBootstrap,
    predictions: Mapping[str, MethodPredictions],
    seed_values: Mapping[str, Mapping[int, float]],
) -> None:
    """Warns when the predictions do not reproduce the recorded scores (then the example-level
    difference and the table's mean difference disagree, and a reader should know)."""
    import warnings

    for method, preds in predictions.items():
        observed, _ = boot.scores(method, preds)
        recorded = seed_values.get(method, {})
        gaps = [abs(o - recorded[s]) for s, o in zip(preds.seeds, observed, strict=True)
                if s in recorded]  # fmt: skip
        if gaps and max(gaps) > RESCORE_TOLERANCE * max(1.0, abs(float(np.mean(observed)))):
            warnings.warn(
                f"{boot.task}/{method}: its predictions rescore to values up to {max(gaps):.3g} "
                f"away from the records' {boot.metric.name}; the example-level comparison "
                "uses the predictions",
                RescoreWarning,
                stacklevel=3,
            )


def task_bootstrap(
    task: str,
    metric: str,
    predictions: Mapping[str, MethodPredictions],
    *,
    n_resamples: int = N_RESAMPLES,
) -> TaskBootstrap | None:
    """The resamples of a task's most common test set, for all of its columns' comparisons."""
    if not predictions:
        return None
    sets = pd.Series([p.example_ids for p in predictions.values()]).value_counts()
    ids = sets.index[0]
    common = {m: p for m, p in predictions.items() if p.example_ids == ids}
    return TaskBootstrap.build(task, metric, common, n_resamples=n_resamples)


def _seed_level(
    ref: Mapping[int, float], other: Mapping[int, float], *, paired: bool, paired_test: Callable
) -> list:
    """[test, n, statistic, p, diff, ci_low, ci_high, 0, "", NaN, seed var, 0] of seed scores."""
    a, b = np.asarray(list(ref.values()), float), np.asarray(list(other.values()), float)
    diff = float(b.mean() - a.mean()) if a.size and b.size else math.nan
    var_unit = _var(a) + _var(b)
    if paired:
        result = paired_test(other, ref)
        seeds = sorted(set(ref) & set(other))
        d = np.asarray([other[s] - ref[s] for s in seeds])
        low, high = _t_interval(d) if d.size > 1 else (math.nan, math.nan)
        test, n, statistic, p = result.test, result.n, result.statistic, result.p
    else:
        statistic, p = welch_test(b, a)
        test, n = (TEST_WELCH if not math.isnan(p) else ""), int(min(a.size, b.size))
        low, high = _welch_interval(b, a)
    return [test, n, statistic, p, diff, low, high, 0, "", math.nan, float(var_unit), 0.0]


def _t_interval(d: np.ndarray) -> tuple[float, float]:
    sem = d.std(ddof=1) / math.sqrt(d.size)
    if sem == 0:
        return float(d.mean()), float(d.mean())
    half = stats.t.ppf(1 - (1 - CONFIDENCE) / 2, d.size - 1) * sem
    return float(d.mean() - half), float(d.mean() + half)


def _welch_interval(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    if x.size < 2 or y.size < 2:
        return math.nan, math.nan
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    diff = float(x.mean() - y.mean())
    if vx + vy == 0:
        return diff, diff
    df = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    half = stats.t.ppf(1 - (1 - CONFIDENCE) / 2, df) * math.sqrt(vx + vy)
    return diff - half, diff + half


def column_power(tests: pd.DataFrame, target: float) -> Power | None:
    """The power of one column's comparisons against its reference (:func:`power`).

    The median over the tested comparisons of the seed and example variance units, at the
    median number of seeds and the test size; None when nothing was tested.
    """
    tested = tests[tests["test"] != ""] if not tests.empty else tests
    if tested.empty:
        return None
    example = tested[tested["n_examples"] > 0]
    n_examples = int(example["n_examples"].median()) if not example.empty else 0
    example_unit = float(example["example_var_unit"].median()) if n_examples else 0.0
    seeds = int(max(1, tested["n"].median()))
    return power(float(tested["seed_var_unit"].median()), example_unit, seeds, n_examples, target)
