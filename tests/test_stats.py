"""Tests of the small-n statistics (analysis/stats.py), their marks in the comparison table,
and the recipe-aware rows and ``--where`` filter (analysis/frame.py, peftbench report).

Every expected number is worked by hand in the comment next to it; scipy only supplies
quantiles of named distributions where no closed form is short (noted where used).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.frame import (
    legacy_recipe,
    load_records,
    matches,
    parse_where,
    quality_runs,
    select,
)
from analysis.stats import (
    aggregate,
    bca_interval,
    complete_blocks,
    holm,
    mean_interval,
    near_front,
    paired_test,
    rank_test,
    summarize,
    t_interval,
)
from analysis.tables import build_tables, to_csv, to_latex, to_markdown

# ---------------------------------------------------------------------------- intervals


def test_t_interval_of_three_seeds_by_hand() -> None:
    # mean 0.723333, s = sqrt((0.023333^2 + 0.003333^2 + 0.026667^2) / 2) = 0.025166,
    # s / sqrt(3) = 0.014530, t(0.975, 2) = 4.302653: 0.723333 -/+ 0.062516.
    # (The percentile bootstrap this replaces gave (0.70, 0.75), the range of the seeds.)
    low, high, method = mean_interval([0.70, 0.72, 0.75])
    assert method == "t"
    assert (low, high) == pytest.approx((0.660817, 0.785849), abs=1e-6)


def test_t_interval_of_two_seeds_is_12_times_their_range() -> None:
    # s / sqrt(2) = 0.01 (half the range), t(0.975, 1) = 12.706205: 0.80 -/+ 0.127062.
    low, high = t_interval([0.79, 0.81])
    assert (low, high) == pytest.approx((0.672938, 0.927062), abs=1e-6)
    assert (high - low) / (0.81 - 0.79) == pytest.approx(12.706205, abs=1e-5)


def test_one_seed_has_no_interval_and_equal_seeds_a_point() -> None:
    low, high, method = mean_interval([0.5])
    assert method == "none" and math.isnan(low) and math.isnan(high)
    assert t_interval([0.6, 0.6, 0.6]) == (0.6, 0.6)
    assert bca_interval([0.6] * 12) == pytest.approx((0.6, 0.6))
    with pytest.raises(ValueError):
        mean_interval([])


def test_bca_from_ten_seeds_is_deterministic_and_inside_the_t_interval() -> None:
    values = np.arange(10, dtype=float)  # mean 4.5, s = 3.0277, s / sqrt(10) = 0.9574
    low, high, method = mean_interval(values)
    assert method == "bca"
    assert (low, high) == mean_interval(values)[:2]  # seeded resampling
    # t: 4.5 -/+ 2.262157 * 0.9574 = (2.334, 6.666); the bootstrap of a uniform grid is a
    # little narrower (it ignores the t tails) and symmetric about the mean.
    assert 2.334 < low < 3.2 and 5.8 < high < 6.666
    assert low + high == pytest.approx(9.0, abs=0.2)
    assert summarize(values).ci_method == "bca" and summarize(values[:9]).ci_method == "t"


# ------------------------------------------------------------------------- paired tests


def test_paired_t_by_hand_uses_only_shared_seeds() -> None:
    # differences 0.02, 0.01, 0.04: mean 0.023333, s = 0.015275, t = 0.023333 / (s / sqrt 3)
    # = sqrt(7) = 2.645751; with 2 df the two-sided p is 1 - |t| / sqrt(2 + t^2)
    # = 1 - sqrt(7) / 3 = 0.118083. Seed 3 of a has no partner and is ignored.
    a = {0: 0.80, 1: 0.82, 2: 0.84, 3: 0.99}
    b = {0: 0.78, 1: 0.81, 2: 0.80}
    result = paired_test(a, b)
    assert (result.n, result.test) == (3, "paired t")
    assert result.statistic == pytest.approx(math.sqrt(7))
    assert result.p == pytest.approx(1 - math.sqrt(7) / 3)


def test_paired_test_degenerate_cases() -> None:
    untested = paired_test({0: 0.8, 1: 0.9}, {1: 0.7})  # one shared seed: nothing to say
    assert (untested.n, untested.test) == (1, "") and math.isnan(untested.p)
    same = paired_test({0: 0.8, 1: 0.9}, {0: 0.8, 1: 0.9})
    assert same.p == 1.0
    # 0.80 - 0.79 and 0.82 - 0.81 differ in the last float bit; rounded they are one
    # constant difference: s = 0, t = +inf, p = 0 (and no precision warning from scipy).
    constant = paired_test({0: 0.80, 1: 0.82}, {0: 0.79, 1: 0.81})
    assert (constant.statistic, constant.p) == (math.inf, 0.0)


def test_wilcoxon_from_six_seeds_by_hand() -> None:
    # Exact signed-rank test: 2^6 = 64 equally likely sign patterns under H0.
    a = {s: 1.0 for s in range(6)}
    b = {s: 1.0 - 0.01 * (s + 1) for s in range(6)}  # a better on all 6: W- = 0
    result = paired_test(a, b)
    assert (result.n, result.test) == (6, "Wilcoxon signed-rank")
    assert result.p == pytest.approx(2 / 64)  # P(W- = 0) doubled
    b[0] = 1.01  # the smallest difference changes sign: W- = 1, P(W- <= 1) = 2 / 64
    assert paired_test(a, b).p == pytest.approx(4 / 64)
    five = paired_test({s: a[s] for s in range(5)}, {s: b[s] for s in range(5)})
    assert five.test == "paired t"  # 2 / 2^5 > 0.05: Wilcoxon could never reject


def test_holm_by_hand() -> None:
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1: 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.01, math.nan, 0.04])  # the untested one is not in the family
    assert adjusted[[0, 2]] == pytest.approx([0.02, 0.04]) and math.isnan(adjusted[1])
    assert holm([]).size == 0


# ------------------------------------------------------------------- across many tasks

SCORES = pd.DataFrame(
    {"a": [0.90, 0.85, 0.70, 0.95], "b": [0.80, 0.75, 0.72, 0.90], "c": [0.70, 0.80, 0.60, 0.85]},
    index=["t1", "t2", "t3", "t4"],
)


def test_friedman_and_nemenyi_by_hand() -> None:
    # Ranks per task (1 = best): t1 a b c, t2 a c b, t3 b a c, t4 a b c.
    # Rank sums R: a 5, b 8, c 11 (N = 4 tasks, k = 3 methods).
    # chi2 = 12 / (N k (k + 1)) * sum R^2 - 3 N (k + 1) = 12 / 48 * 210 - 48 = 4.5
    # p = exp(-4.5 / 2) (chi2 with 2 df) = 0.105399 (asymptotic; 4 tasks get the exact
    # permutation null by default, tested in test_paired.py).
    test = rank_test(SCORES, null="asymptotic")
    assert (test.test, test.k, test.n_blocks) == ("Friedman", 3, 4)
    assert test.statistic == pytest.approx(4.5)
    assert test.p == pytest.approx(math.exp(-2.25))
    assert test.ranks.to_dict() == {"a": 1.25, "b": 2.0, "c": 2.75}
    # CD = q(0.95, 3, inf) / sqrt(2) * sqrt(k (k + 1) / (6 N)) = 2.343701 * sqrt(0.5)
    assert test.cd == pytest.approx(2.343701 * math.sqrt(0.5), abs=1e-6)
    # Nemenyi a vs c: |1.25 - 2.75| / sqrt(0.5) * sqrt(2) = 3.0 on the studentized range
    # (k = 3, df = inf): p = 0.085543 (scipy.stats.studentized_range.sf(3.0, 3, inf));
    # a vs b: 0.75 / sqrt(0.5) * sqrt(2) = 1.5, p = 0.538595.
    assert test.nemenyi.loc["a", "c"] == pytest.approx(0.085543, abs=1e-6)
    assert test.nemenyi.loc["a", "b"] == pytest.approx(0.538595, abs=1e-6)


def test_two_methods_get_the_sign_test() -> None:
    test = rank_test(SCORES[["a", "c"]])  # a better on all 4 tasks: p = 2 / 2^4
    assert (test.test, test.statistic, test.p) == ("sign test", 4.0, pytest.approx(0.125))
    with pytest.raises(ValueError):
        rank_test(SCORES[["a"]])


def test_complete_blocks_keeps_the_largest_full_sub_table() -> None:
    means = pd.DataFrame(
        {
            "t1": [0.9, 0.8, 0.7, 0.6],
            "t2": [0.8, 0.7, math.nan, 0.5],
            "t3": [0.7, 0.6, math.nan, 0.4],
        },
        index=["a", "b", "c", "d"],
    )
    # c ran on t1 only: a, b, d on t1-t3 (9 cells) beat all four on t1 (one task).
    blocks = complete_blocks(means)
    assert list(blocks.columns) == ["a", "b", "d"] and list(blocks.index) == ["t1", "t2", "t3"]
    assert complete_blocks(means[["t1"]]).empty  # one task: no rank test


def test_near_front_by_hand() -> None:
    # cost 1, 2, 3: front = points 0 (0.70) and 1 (0.80); point 2 scores 0.75 at cost 3,
    # where the front's level is 0.80: its upper end 0.82 reaches it, 0.78 would not.
    cost, mean = [1.0, 2.0, 3.0], [0.70, 0.80, 0.75]
    assert near_front(cost, mean, [0.72, 0.85, 0.82]).tolist() == [False, False, True]
    assert near_front(cost, mean, [0.72, 0.85, 0.78]).tolist() == [False, False, False]
    assert near_front(cost, mean, [0.72, 0.85, math.nan]).tolist() == [False, False, False]
    # lower is better: the better end is the low one; level at cost 3 is 0.70
    loss = near_front(cost, [0.80, 0.70, 0.75], [0.78, 0.60, 0.69], higher_is_better=False)
    assert loss.tolist() == [False, False, True]


# ---------------------------------------------------------------- marks in the table


def _runs(rows: list[tuple[str, str, int, float]]) -> pd.DataFrame:
    """Quality runs in memory: (task, method, seed, accuracy) per row."""
    df = pd.DataFrame(
        [{"task": t, "model": "m", "method": m, "method_label": m, "seed": s,
          "primary_value": v, "run_id": f"{t}--m--{m}--s{s}"} for t, m, s, v in rows]
    )  # fmt: skip
    return df.assign(
        status="success", weights="pretrained", primary_name="accuracy", primary_split="test",
        higher_is_better=True, task_version=1, budget_pct=math.nan, trainable_pct=1.0,
        peak_mem_bytes=math.nan, train_time_s=math.nan, tokens_per_s=math.nan,
        artifact_bytes=math.nan, recipe_hash="00000000",
    )  # fmt: skip


def _cells(markdown: str) -> dict[str, dict[str, str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


# a: 0.80 0.82 0.84; b differs from a by 0.02 0.01 0.04 (p = 0.118083, above);
# c by 0.20 0.21 0.19: mean 0.20, s 0.01, t = 0.20 / (0.01 / sqrt 3) = 34.641,
# p = 1 - 34.641 / sqrt(2 + 34.641^2) = 0.000832. Holm over the 2: c 0.000832 * 2 = 0.001665,
# b max(0.001665, 0.118083) = 0.118083. b is tied with a, c is not.
TIE = [
    *[("x", "a", s, v) for s, v in enumerate([0.80, 0.82, 0.84])],
    *[("x", "b", s, v) for s, v in enumerate([0.78, 0.81, 0.80])],
    *[("x", "c", s, v) for s, v in enumerate([0.60, 0.61, 0.65])],
]


def test_tie_mark_comes_from_the_holm_corrected_paired_test() -> None:
    (table,) = build_tables(aggregate(_runs(TIE)))
    tests = table.tests["x"]
    assert tests.loc["b", "p_holm"] == pytest.approx(1 - math.sqrt(7) / 3)
    t_c = 0.20 / (0.01 / math.sqrt(3))
    assert tests.loc["c", "p"] == pytest.approx(1 - t_c / math.sqrt(2 + t_c**2))
    assert tests.loc["c", "p_holm"] == pytest.approx(2 * (1 - t_c / math.sqrt(2 + t_c**2)))
    assert table.tied["x"] == {"b"}
    markdown = to_markdown([table])
    cells = _cells(markdown)
    assert cells["a"]["x"] == "**82.0 ± 2.0**"
    assert cells["b"]["x"] == "79.7 ± 1.5†"  # mean 0.796667, s 0.015275
    assert cells["c"]["x"] == "62.0 ± 2.6"
    assert "two-sided paired t (n = 3)" in markdown and "Holm-corrected" in markdown
    assert "Student's t" in markdown and "Not tested" not in markdown
    assert r"79.7 $\pm$ 1.5$^\dagger$" in to_latex([table])
    csv = to_csv([table]).splitlines()
    assert "x/p_holm_vs_best" in csv[0] and "x/ci_method" in csv[0]


def test_one_seed_table_says_it_has_no_uncertainty_estimate() -> None:
    (table,) = build_tables(aggregate(_runs([("x", "a", 0, 0.8), ("x", "b", 0, 0.7)])))
    markdown = to_markdown([table])
    assert "1 seed: no uncertainty estimate (no interval, no test)." in markdown
    assert _cells(markdown)["b"]["x"] == "70.0"  # the caption says it once for all cells
    assert "none was tested" in markdown and table.tied["x"] == set()
    assert table.rank_test is None  # one task: nothing across tasks


def test_a_column_of_six_seeds_is_decided_by_wilcoxon() -> None:
    # Both methods rise with the seed (a shared seed effect, so the test pairs by seed);
    # b is below a by 0.01 .. 0.06: every signed rank positive, exact p = 2 / 2^6.
    rows = [("x", "a", s, 0.80 + 0.02 * s) for s in range(6)]
    rows += [("x", "b", s, 0.80 + 0.02 * s - 0.01 * (s + 1)) for s in range(6)]
    (table,) = build_tables(aggregate(_runs(rows)))
    assert table.tests["x"].loc["b", "p"] == pytest.approx(2 / 64)
    assert "Wilcoxon signed-rank (n = 6)" in to_markdown([table])


def test_table_names_the_friedman_test_when_methods_share_tasks() -> None:
    rows = [
        (task, method, 0, value)
        for method in SCORES.columns
        for task, value in SCORES[method].items()
    ]
    (table,) = build_tables(aggregate(_runs(rows)))
    assert table.rank_test.statistic == pytest.approx(4.5)
    # exact null of 3 methods on 4 tasks (6^3 arrangements): P(chi2_r >= 4.5) = 0.125 (27/216)
    assert table.rank_test.null == "exact"
    assert "Friedman test over the 4 tasks that 3 methods all share, χ²(2) = 4.5, p = 0.125" in (
        to_markdown([table])
    )
    assert "p and CD exact, from every arrangement of the ranks" in to_markdown([table])
    assert r"$\chi^2$(2) = 4.5" in to_latex([table])


# ------------------------------------------------------------------- recipes and --where


def _record(
    path: Path,
    *,
    seed: int,
    value: float,
    recipe: dict | None,
    config: dict | None = None,
    method: str = "lora",
) -> None:
    text = json.dumps(recipe, sort_keys=True).encode()
    hash_ = None if recipe is None else hashlib.sha256(text).hexdigest()[:8]
    experiment = {"task": "polarity", "model": "minilm-l6", "method": method, "seed": seed,
                  "weights": "pretrained", "budget_pct": None, "task_version": 1}  # fmt: skip
    if recipe is not None:
        experiment |= {"recipe": recipe, "recipe_hash": hash_}
    record = {
        "schema_version": 1,
        "run_id": f"polarity--minilm-l6--{method}--s{seed}" + (f"--{hash_}" if hash_ else ""),
        "status": "success",
        "created_at": "2026-12-01T10:00:00+00:00",
        "experiment": experiment,
        "config": config or {},
        "metrics": {
            "primary": {
                "name": "accuracy",
                "split": "test",
                "value": value,
                "higher_is_better": True,
            }
        },  # fmt: skip
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    """A 2 x 2 sweep (lr x r) of lora, 2 seeds each, plus one bitfit recipe."""
    results = tmp_path / "results"
    for lr in (0.0005, 0.001):
        for r in (8, 16):
            recipe = {"method.lr": lr, "method.peft.r": r, "train.epochs": 2}
            for seed in (0, 1):
                value = 0.70 + (0.05 if lr == 0.001 else 0) + (0.02 if r == 16 else 0) + seed / 100
                _record(results / f"lora-{lr}-{r}-{seed}.json", seed=seed, value=value,
                        recipe=recipe)  # fmt: skip
    for seed in (0, 1):
        _record(results / f"bitfit-{seed}.json", seed=seed, value=0.6, method="bitfit",
                recipe={"method.lr": 0.001, "train.epochs": 2})  # fmt: skip
    return results


def test_a_2x2_sweep_gives_four_labelled_rows(sweep_dir: Path) -> None:
    agg = aggregate(quality_runs(load_records(sweep_dir))).set_index("method_label")
    assert sorted(agg.index) == [
        "bitfit",  # one recipe: the plain name
        "lora (lr=0.0005, r=16)",
        "lora (lr=0.0005, r=8)",
        "lora (lr=0.001, r=16)",
        "lora (lr=0.001, r=8)",
    ]
    # seeds of one recipe aggregate: 0.70 + 0.05 + 0.02 + (0, 0.01)
    assert agg.loc["lora (lr=0.001, r=16)", "n"] == 2
    assert agg.loc["lora (lr=0.001, r=16)", "mean"] == pytest.approx(0.775)


def test_where_keeps_the_matching_recipes(sweep_dir: Path) -> None:
    records = load_records(sweep_dir)
    kept = quality_runs(select(records, where={"method.lr": "1e-3"}))  # numeric compare
    labels = sorted(set(kept["method_label"]))
    assert labels == ["bitfit", "lora (r=16)", "lora (r=8)"]  # lr no longer differs
    both = select(records, where={"method.lr": "0.001", "method.peft.r": "16"})
    assert len(both) == 2 and set(both["method"]) == {"lora"}  # bitfit has no r: no match
    assert select(records, where={"method.lr": "0.01"}).empty


def test_report_cli_where_filter(sweep_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from peftbench.cli import main

    out = sweep_dir.parent / "report"
    argv = ["report", "--results", str(sweep_dir), "--out", str(out)]
    assert main([*argv, "--where", "method.peft.r=8", "--where", "method.lr=0.0005"]) == 0
    cells = _cells((out / "comparison.md").read_text())
    assert list(cells) == ["lora"]  # one recipe left: the plain name
    assert cells["lora"]["polarity"] == "**70.5 ± 0.7**"
    assert "method.peft.r=8" in (out / "report.html").read_text()
    assert main([*argv, "--where", "method.lr"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["peftbench: error: --where needs KEY=VALUE, got 'method.lr'; e.g. --where "
                   "method.lr=0.001"]  # fmt: skip


def test_legacy_recipe_drops_the_keys_that_cannot_change_a_result(tmp_path: Path) -> None:
    config = {
        "seed": 3, "results_dir": "r", "sweep_id": "x", "force": True, "device": "cuda:1",
        "tracker": {"name": "wandb"}, "data_cache": True, "instrument": {"latency": True},
        "hydra": {"job": {"name": "j"}},
        "train": {"lr": 0.001, "threads": 2, "log_every_steps": 10, "eval_batch_size": 64,
                  "num_workers": 1, "checkpoint_every_steps": 5, "keep_checkpoints": 2},
        "method": {"name": "lora", "peft": {"r": 8}},
    }  # fmt: skip
    assert legacy_recipe(config) == {"method.name": "lora", "method.peft.r": 8, "train.lr": 0.001}
    # Old records (no experiment.recipe) of two learning rates under one run id stay apart.
    for i, lr in enumerate((0.001, 0.002)):
        _record(tmp_path / f"{i}.json", seed=0, value=0.7 + i / 10, recipe=None,
                config={"seed": 0, "train": {"lr": lr}})  # fmt: skip
    runs = quality_runs(load_records(tmp_path))
    assert sorted(runs["method_label"]) == ["lora (lr=0.001)", "lora (lr=0.002)"]


def test_labels_for_missing_and_shared_short_names(tmp_path: Path) -> None:
    _record(tmp_path / "a.json", seed=0, value=0.7, recipe={"method.lr": 0.001, "train.lr": 1})
    _record(tmp_path / "b.json", seed=0, value=0.8, recipe={"method.lr": 0.002})
    labels = sorted(quality_runs(load_records(tmp_path))["method_label"])
    assert labels == [
        "lora (method.lr=0.001, train.lr=1)",
        "lora (method.lr=0.002, train.lr=unset)",
    ]


def test_matches_spellings() -> None:
    assert matches(0.001, "1e-3") and matches(8, "8.0") and not matches(8, "eight")
    assert matches(True, "true") and matches(False, "False") and not matches(True, "false")
    assert matches(None, "null") and matches("lora", "lora") and not matches("lora", "LoRA")
    assert parse_where(["a.b = 1", "c=x=y"]) == {"a.b": "1", "c": "x=y"}


# ----------------------------------------------------------------------------- presets

CONCLUSION_PRESETS = ("offline-suite", "budget-matched", "glue-roberta", "delta-tuning-t5")


@pytest.mark.parametrize("name", CONCLUSION_PRESETS)
def test_presets_meant_for_conclusions_run_at_least_3_seeds(name: str) -> None:
    from omegaconf import OmegaConf

    path = Path(__file__).parents[1] / "conf" / "experiment" / f"{name}.yaml"
    seeds = str(OmegaConf.load(path).hydra.sweeper.params.seed).split(",")
    assert len({int(s) for s in seeds}) >= 3, f"{name}: seeds {seeds}"
