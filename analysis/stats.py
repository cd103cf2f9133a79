"""Statistics over seeds and tasks that hold at small n.

- An interval of the mean per cell: Student's t for 2 <= n < :data:`BOOTSTRAP_MIN_N` seeds,
  the BCa bootstrap from there on (a percentile bootstrap of 2 or 3 values is just their
  range), and none for one seed.
- Ties with the best method: a paired test over the seeds two methods share (runs with one
  seed share data order and head initialisation), Holm-corrected over a column.
- Many methods on many tasks: the Friedman test over tasks (blocks) and the Nemenyi
  post-hoc, the input of a critical-difference diagram: up to :data:`EXACT_MAX_BLOCKS`
  tasks from the permutation distribution of the ranks (exact, or sampled), above from
  scipy's chi-square and studentized range (scikit-posthocs' Nemenyi).

The tests themselves are scipy's, scikit-posthocs' and statsmodels'; this module only
chooses between them and keeps their inputs honest. pandas is used to group runs.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from analysis.clean_costs import ISOLATION as CLEAN_ISOLATION
from analysis.clean_costs import MEASURED_ON as CLEAN_MEASURED_ON
from analysis.clean_costs import REPLACES as CLEAN_COST_COLUMNS
from analysis.frame import SUCCESS, SYNTHETIC

GROUP = ("task", "model", "method_label")
# Cost columns averaged over seeds next to the score (NaN when no run recorded them).
COST_COLUMNS = ("trainable_pct", "peak_mem_bytes", "train_time_s", "tokens_per_s", "artifact_bytes")
# Seed-means kept beside the costs (the CSV and the forgetting plot; older records: NaN), and
# the costs of a clean cost run where the report was given one (``analysis.clean_costs``).
MEASURE_COLUMNS = (
    "stored_pct", "forgetting", "energy_j", "energy_j_per_token", *CLEAN_COST_COLUMNS
)  # fmt: skip
# A task's runs must agree on these, or their scores are not comparable.
TASK_INVARIANTS = ("primary_name", "primary_split", "higher_is_better", "task_version")
CONFIDENCE = 0.95
ALPHA = 1.0 - CONFIDENCE
# Below 10 values the bootstrap distribution of a mean is too coarse to cover as claimed
# (with 3 seeds it has 10 distinct values); Student's t is exact for normal noise.
BOOTSTRAP_MIN_N = 10
N_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
# The exact two-sided Wilcoxon signed-rank p-value is at least 2 / 2^n, which is below 0.05
# only from n = 6 pairs on; with fewer pairs it could never reject, so the paired t is used.
WILCOXON_MIN_N = 6
# Differences of scores are rounded to this many decimals before a paired test, so that a
# constant difference is exactly constant (0.80 - 0.79 and 0.82 - 0.81 differ in float).
DIFF_DECIMALS = 12

# How an interval was computed, as written in captions.
CI_NONE, CI_T, CI_BCA = "none", "t", "bca"
TEST_T, TEST_WILCOXON = "paired t", "Wilcoxon signed-rank"


@dataclass(frozen=True)
class Summary:
    """Mean, sample std, count, range and 95% interval of the mean of a set of seeds.

    ``ci_method`` is ``"t"`` (Student's t), ``"bca"`` (BCa bootstrap) or ``"none"`` (one
    seed: ``ci_low`` and ``ci_high`` are NaN, since one value carries no spread estimate).
    """

    mean: float
    std: float
    n: int
    ci_low: float
    ci_high: float
    ci_method: str
    min: float
    max: float


def t_interval(
    values: Sequence[float] | np.ndarray, *, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Student's t interval of the mean: mean -/+ t_{n-1} * s / sqrt(n).

    Args:
        values: At least two values.
        confidence: Coverage of the interval.

    Returns:
        (low, high); both the mean when the values are all equal.
    """
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        raise ValueError("a t interval needs at least two values")
    sem = stats.sem(x)
    if sem == 0:
        return float(x.mean()), float(x.mean())
    low, high = stats.t.interval(confidence, x.size - 1, loc=x.mean(), scale=sem)
    return float(low), float(high)


def bca_interval(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """BCa (bias-corrected and accelerated) bootstrap interval of the mean (scipy).

    The generator is seeded, so the same values always give the same interval (reports are
    reproducible and diff cleanly).

    Args:
        values: At least :data:`BOOTSTRAP_MIN_N` values for the interval to mean much.
        confidence: Coverage of the interval.
        n_resamples: Number of bootstrap resamples.
        seed: Seed of the resampling generator.

    Returns:
        (low, high); both the mean when the values are all equal.
    """
    x = np.asarray(values, dtype=float)
    if np.ptp(x) == 0:  # BCa's acceleration is 0/0 for constant data
        return float(x.mean()), float(x.mean())
    result = stats.bootstrap(
        (x,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
        method="BCa", rng=np.random.default_rng(seed),
    )  # fmt: skip
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def mean_interval(
    values: Sequence[float] | np.ndarray, *, confidence: float = CONFIDENCE
) -> tuple[float, float, str]:
    """The interval of the mean that holds at this n: none, Student's t, or BCa.

    Args:
        values: One score per seed; at least one.
        confidence: Coverage of the interval.

    Returns:
        (low, high, method) with method one of :data:`CI_NONE`, :data:`CI_T`, :data:`CI_BCA`;
        (NaN, NaN, "none") for a single value.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("an interval needs at least one value")
    if x.size == 1:
        return math.nan, math.nan, CI_NONE
    if x.size < BOOTSTRAP_MIN_N:
        return (*t_interval(x, confidence=confidence), CI_T)
    return (*bca_interval(x, confidence=confidence), CI_BCA)


def summarize(values: Sequence[float] | np.ndarray) -> Summary:
    """Mean, sample std (ddof=1), n and 95% interval of the mean of the scores of seeds.

    Args:
        values: One score per seed; at least one.

    Returns:
        The summary (min and max are the extreme seeds). With n=1 the std and the interval
        are NaN: a sample std is undefined for one value, and 0 would claim a spread of zero.
    """
    x = np.asarray(values, dtype=float)
    std = float(x.std(ddof=1)) if x.size > 1 else math.nan
    low, high, method = mean_interval(x)
    return Summary(
        float(x.mean()), std, int(x.size), low, high, method, float(x.min()), float(x.max())
    )


# ------------------------------------------------------------------------ paired over seeds


@dataclass(frozen=True)
class PairedTest:
    """A two-sided paired test of two methods over the seeds they share.

    ``test`` is :data:`TEST_T` or :data:`TEST_WILCOXON`, or ``""`` when fewer than two seeds
    are shared (then ``statistic`` and ``p`` are NaN: nothing can be said).
    """

    n: int
    test: str
    statistic: float
    p: float


def paired_test(a: Mapping[int, float], b: Mapping[int, float]) -> PairedTest:
    """Paired test of the scores of two methods, matched by seed.

    The paired t-test for 2 <= n < :data:`WILCOXON_MIN_N` shared seeds, the exact Wilcoxon
    signed-rank test from there on. Identical scores on every seed give p = 1; a difference
    that is the same non-zero number on every seed gives p = 0 (the t statistic is infinite).

    Args:
        a: Score per seed of one method.
        b: Score per seed of the other.

    Returns:
        The test; ``n`` is the number of shared seeds.
    """
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return PairedTest(len(seeds), "", math.nan, math.nan)
    diff = np.round([a[s] - b[s] for s in seeds], DIFF_DECIMALS)
    test = TEST_T if len(seeds) < WILCOXON_MIN_N else TEST_WILCOXON
    if not diff.any():
        return PairedTest(len(seeds), test, 0.0, 1.0)
    if test == TEST_T:
        if np.ptp(diff) == 0:  # scipy would warn of precision loss; the limit is exact
            return PairedTest(len(seeds), test, math.copysign(math.inf, diff[0]), 0.0)
        result = stats.ttest_1samp(diff, 0.0)
    else:
        result = stats.wilcoxon(diff, zero_method="wilcox", method="auto")
    return PairedTest(len(seeds), test, float(result.statistic), float(result.pvalue))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of p-values (statsmodels ``multipletests``).

    Args:
        pvalues: Raw p-values of the comparisons of one family; NaN entries (comparisons
            that could not be tested) are left out of the family and stay NaN.

    Returns:
        Adjusted p-values in input order; reject at level alpha where adjusted < alpha.
    """
    from statsmodels.stats.multitest import multipletests  # heavy import, only when needed

    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    tested = ~np.isnan(p)
    if tested.any():
        out[tested] = multipletests(p[tested], alpha=ALPHA, method="holm")[1]
    return out


# ---------------------------------------------------------------------- across many tasks


# ---------------------------------------------------------- exact / permutation rank nulls

#: Up to this many tasks (blocks) the Friedman p and the Nemenyi critical difference come
#: from the permutation distribution of the ranks; above, from the chi-square and the
#: studentized range, whose approximations are conservative at few blocks (Demšar 2006
#: warns of small N; issue 33: at 3 tasks x 21 methods the asymptotic CD is 18.1, the
#: permutation one about 16.7).
EXACT_MAX_BLOCKS = 10
#: Enumerate the (k!)^(N-1) rank arrangements up to this many; sample them beyond.
ENUMERATE_MAX = 200_000
N_PERMUTATIONS = 20_000
NULL_EXACT, NULL_PERMUTATION, NULL_ASYMPTOTIC = "exact", "permutation", "asymptotic"


@dataclass(frozen=True)
class RankNull:
    """Null distribution of the rank sums of k methods over N blocks (ties absent).

    Under H0 each block ranks the methods in a uniformly random order. ``friedman`` and
    ``spread`` (max - min of the rank sums) hold one value per arrangement: all of them
    (``kind`` exact; block 1 fixed, since both statistics ignore the methods' names) or
    :data:`N_PERMUTATIONS` drawn with a fixed seed (``kind`` permutation).
    """

    kind: str
    friedman: np.ndarray
    spread: np.ndarray

    def friedman_p(self, statistic: float) -> float:
        return self._tail(self.friedman, statistic)

    def spread_p(self, spread: float) -> float:
        return self._tail(self.spread, spread)

    def critical_spread(self, alpha: float = ALPHA) -> float:
        """The smallest rank-sum spread c with P(spread >= c) <= alpha."""
        values = np.unique(self.spread)
        tail = np.array([self._tail(self.spread, v) for v in values])
        return float(values[np.argmax(tail <= alpha)]) if (tail <= alpha).any() else math.inf

    def _tail(self, null: np.ndarray, observed: float) -> float:
        """P(null >= observed); sampled: (1 + hits) / (1 + draws), never 0 (the observed
        arrangement is one of the possible ones; Phipson & Smyth, SAGMB 9, 2010)."""
        hits = int(np.sum(null >= observed - 1e-9))
        if self.kind == NULL_EXACT:
            return hits / null.size
        return (1 + hits) / (1 + null.size)


def rank_null(k: int, n: int, *, seed: int = BOOTSTRAP_SEED) -> RankNull:
    """The permutation distribution of rank sums for k methods on n blocks."""
    ranks = np.arange(1, k + 1, dtype=np.int64)
    if math.factorial(k) ** (n - 1) <= ENUMERATE_MAX:
        perms = np.array(list(itertools.permutations(ranks)), dtype=np.int64)
        sums = ranks[None, :]
        for _ in range(n - 1):
            sums = (sums[:, None, :] + perms[None, :, :]).reshape(-1, k)
        kind = NULL_EXACT
    else:
        rng = np.random.default_rng(seed)
        sums = np.zeros((N_PERMUTATIONS, k), dtype=np.int64)
        for _ in range(n):
            sums += rng.permuted(np.broadcast_to(ranks, (N_PERMUTATIONS, k)), axis=1)
        kind = NULL_PERMUTATION
    friedman = 12.0 / (n * k * (k + 1)) * (sums.astype(float) ** 2).sum(axis=1) - 3 * n * (k + 1)
    return RankNull(kind, friedman, (sums.max(axis=1) - sums.min(axis=1)).astype(float))


@dataclass(frozen=True)
class RankTest:
    """Friedman test over blocks (tasks) of k methods, with the Nemenyi post-hoc.

    ``scores`` holds one row per block and one column per method, oriented so that higher
    is better; ``ranks`` are average ranks (1 = best). For k = 2 the omnibus test is the
    exact two-sided sign test (Friedman's test reduces to it; scipy's needs k >= 3).
    """

    scores: pd.DataFrame
    ranks: pd.Series
    test: str
    statistic: float
    p: float
    nemenyi: pd.DataFrame  # p-values, methods x methods
    cd: float  # Nemenyi critical difference of average ranks at ALPHA
    # where p, the Nemenyi p-values and cd come from: NULL_EXACT, NULL_PERMUTATION (the
    # rank permutation distribution) or NULL_ASYMPTOTIC (chi-square, studentized range)
    null: str = NULL_ASYMPTOTIC

    @property
    def k(self) -> int:
        """Number of methods."""
        return self.scores.shape[1]

    @property
    def n_blocks(self) -> int:
        """Number of blocks (tasks)."""
        return self.scores.shape[0]


def rank_test(scores: pd.DataFrame, *, null: str = "auto") -> RankTest:
    """Friedman (or, for two methods, sign) test and Nemenyi post-hoc over complete blocks.

    Args:
        scores: One row per block, one column per method, no NaN, higher is better.
        null: ``"auto"`` (the rank permutation distribution up to :data:`EXACT_MAX_BLOCKS`
            blocks, the asymptotic one above), ``"permutation"`` or ``"asymptotic"``.

    Returns:
        The test. Asymptotic: the critical difference is q_alpha * sqrt(k (k + 1) / (6 N)),
        q_alpha the studentized range quantile over sqrt(2) (Demšar, JMLR 7, 2006), and p
        Friedman's chi-square with k - 1 df. Permutation (:func:`rank_null`): p is the share
        of rank arrangements whose Friedman statistic reaches the observed one (scipy's,
        tie-corrected), the Nemenyi p of a pair the share whose rank-sum spread reaches the
        pair's difference, and CD the smallest spread whose share is at most 5%, over N.

    Raises:
        ValueError: With fewer than 2 methods or 2 blocks, or a missing score.
    """
    import scikit_posthocs as sp  # pulls seaborn and statsmodels: only when needed

    n, k = scores.shape
    if k < 2 or n < 2 or scores.isna().any().any():
        raise ValueError("a rank test needs at least 2 methods on at least 2 complete blocks")
    if null not in ("auto", NULL_PERMUTATION, NULL_ASYMPTOTIC):
        raise ValueError(f"null must be auto, permutation or asymptotic, not {null!r}")
    ranks = scores.rank(axis=1, ascending=False, method="average").mean(axis=0)
    if k == 2:
        a, b = scores.iloc[:, 0], scores.iloc[:, 1]
        wins, losses = int((a > b).sum()), int((a < b).sum())
        p = stats.binomtest(wins, wins + losses).pvalue if wins + losses else 1.0
        test, statistic = "sign test", float(wins)
    else:
        result = stats.friedmanchisquare(*(scores[c].to_numpy(float) for c in scores.columns))
        test, statistic, p = "Friedman", float(result.statistic), float(result.pvalue)
    if null == NULL_ASYMPTOTIC or (null == "auto" and n > EXACT_MAX_BLOCKS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            nemenyi = sp.posthoc_nemenyi_friedman(scores.to_numpy(float))
        nemenyi.index = nemenyi.columns = scores.columns
        q = stats.studentized_range.ppf(CONFIDENCE, k, np.inf) / math.sqrt(2)
        cd = float(q * math.sqrt(k * (k + 1) / (6 * n)))
        return RankTest(scores, ranks, test, statistic, float(p), nemenyi, cd, NULL_ASYMPTOTIC)
    dist = rank_null(k, n)
    if k > 2:  # the sign test is exact already
        p = dist.friedman_p(statistic)
    spread = n * np.abs(ranks.to_numpy()[:, None] - ranks.to_numpy()[None, :])
    nemenyi = pd.DataFrame(
        np.vectorize(dist.spread_p)(spread), index=scores.columns, columns=scores.columns
    )
    cd = dist.critical_spread() / n
    return RankTest(scores, ranks, test, statistic, float(p), nemenyi, cd, dist.kind)


def complete_blocks(means: pd.DataFrame) -> pd.DataFrame:
    """The largest complete methods x tasks sub-table of a table with gaps.

    Candidates: for j = 2..k, the j methods run on most tasks, the tasks they all share,
    and every other method run on those tasks too; the one with most cells wins (then most
    tasks). Deterministic: ties in coverage are broken by name.

    Args:
        means: One row per method, one column per task (NaN: not run).

    Returns:
        Tasks as rows, methods as columns, no NaN; empty when no 2 methods share 2 tasks.
    """
    present = means.notna()
    order = sorted(means.index, key=lambda m: (-int(present.loc[m].sum()), m))
    best: tuple[int, int, list[str], list[str]] = (0, 0, [], [])
    for j in range(2, len(order) + 1):
        tasks = [t for t in means.columns if present.loc[order[:j], t].all()]
        methods = [m for m in order if present.loc[m, tasks].all()] if tasks else []
        if len(tasks) >= 2 and len(methods) >= 2:
            best = max(best, (len(tasks) * len(methods), len(tasks), methods, tasks))
    _, _, methods, tasks = best
    return means.loc[sorted(methods), tasks].T if methods else pd.DataFrame()


# -------------------------------------------------------------------------- aggregation


def aggregate(runs: pd.DataFrame, *, value: str = "primary_value") -> pd.DataFrame:
    """Aggregates seeds per (task, model, method_label).

    Args:
        runs: Quality runs, i.e. the output of ``records.quality_runs``: success only, no
            synthetic weights, one row per (run_id, recipe). Anything else raises, so a
            table can never silently mix in failed, synthetic or superseded runs.
        value: Column to summarise.

    Returns:
        One row per group with task, model, method_label, method, budget_pct, metric, split,
        higher_is_better, the :class:`Summary` fields, ``seed_values`` (dict seed -> value
        of the runs that recorded a seed, for paired tests) and the seed-mean of each cost
        column.

    Raises:
        ValueError: If ``runs`` is not a quality view, a task mixes metrics, splits,
            directions or task versions, or a group holds one seed twice (two recipes
            under one label).
    """
    _check_quality_view(runs)
    _check_task_invariants(runs)
    rows = []
    for (task, model, label), group in runs.groupby(list(GROUP), sort=True):
        first = group.iloc[0]
        seeded = group[group["seed"].notna()]
        if seeded["seed"].duplicated().any():
            raise ValueError(f"{task}/{model}/{label} holds a seed twice; recipes were mixed")
        summary = summarize(group[value].to_numpy(dtype=float))
        rows.append({
            "task": task, "model": model, "method_label": label,
            "method": first["method"], "budget_pct": first["budget_pct"],
            "metric": first["primary_name"], "split": first["primary_split"],
            "higher_is_better": bool(first["higher_is_better"]),
            **asdict(summary),
            # a collapsed seed (constant prediction) drags the mean: the median beside it
            "median": float(np.median(group[value].to_numpy(dtype=float))),
            "n_collapsed": _count_true(group, "collapsed"),
            "seed_values": dict(zip(seeded["seed"], seeded[value].astype(float), strict=True)),
            **{c: group[c].astype(float).mean() for c in COST_COLUMNS},
            **{c: _seed_mean(group, c) for c in MEASURE_COLUMNS},
            # one head per task, so one measure per group (None: not recorded)
            "forgetting_measure": _first(group, "forgetting_measure"),
            CLEAN_ISOLATION: _first(group, CLEAN_ISOLATION),  # how its clean cost run ran
            CLEAN_MEASURED_ON: _first(group, CLEAN_MEASURED_ON),  # and on which day
        })  # fmt: skip
    return pd.DataFrame(rows)


def _count_true(group: pd.DataFrame, column: str) -> int:
    return int(group[column].eq(True).sum()) if column in group else 0


def _seed_mean(group: pd.DataFrame, column: str) -> float:
    return group[column].astype(float).mean() if column in group else float("nan")


def _first(group: pd.DataFrame, column: str) -> str | None:
    values = group[column].dropna() if column in group else pd.Series(dtype=object)
    return str(values.iloc[0]) if len(values) else None


def _check_quality_view(runs: pd.DataFrame) -> None:
    problems = []
    if (runs["status"] != SUCCESS).any():
        problems.append("non-success runs")
    if (runs["weights"] == SYNTHETIC).any():
        problems.append("synthetic-weight runs")
    key = ["run_id", "recipe_hash"] if "recipe_hash" in runs else ["run_id"]
    if runs.duplicated(key).any():
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


def near_front(
    cost: Sequence[float] | np.ndarray,
    score: Sequence[float] | np.ndarray,
    high: Sequence[float] | np.ndarray,
    *,
    higher_is_better: bool = True,
) -> np.ndarray:
    """Marks the points off the frontier whose interval reaches the frontier at their cost.

    The frontier is drawn on means (:func:`pareto_front`); at a point's cost its level is
    the best mean of the frontier points that cost no more. A dominated point whose
    interval end on the better side (``high`` for higher-is-better scores, the low end
    otherwise) reaches that level is not shown to be worse by these seeds.

    Args:
        cost: Cost per point.
        score: Mean score per point.
        high: The interval end on the better side per point (NaN: no interval).
        higher_is_better: Direction of the score.

    Returns:
        Boolean mask in input order; False on the frontier and where there is no interval.
    """
    c = np.asarray(cost, dtype=float)
    sign = 1.0 if higher_is_better else -1.0
    s, h = np.asarray(score, dtype=float) * sign, np.asarray(high, dtype=float) * sign
    front = pareto_front(c, s)
    out = np.zeros(c.size, dtype=bool)
    for i in np.flatnonzero(~front):
        level = s[front & (c <= c[i])].max()  # the cheapest point is on the front: never empty
        out[i] = bool(h[i] >= level)  # NaN compares False
    return out
