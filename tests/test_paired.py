"""Tests of the example-level comparisons (analysis/paired.py), the exact rank nulls
(analysis/stats.py) and their place in the report.

Hand-worked numbers are in the comment next to each check.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import paired
from analysis.frame import load_records, quality_runs
from analysis.paired import (
    MethodPredictions,
    PredictionsError,
    TaskBootstrap,
    compare,
    decomposition,
    mcnemar,
    power,
    read_predictions,
    seed_effect,
    seed_weights,
)
from analysis.pairs import pair_tests, pairs_markdown
from analysis.report import build_report
from analysis.stats import aggregate, rank_null, rank_test
from analysis.tables import build_tables, to_csv, to_markdown
from tasks.metrics import METRICS

# ------------------------------------------------------------------ bootstrap by hand


def _boot(counts: list[list[int]], ref: MethodPredictions, other: MethodPredictions):
    boot = TaskBootstrap.build("t", "accuracy", {"ref": ref, "m": other}, n_resamples=1)
    boot.counts = np.asarray(counts)  # the resamples, fixed by hand
    return compare(boot, ("ref", ref), ("m", other))


def test_bootstrap_of_two_examples_by_hand() -> None:
    # 2 examples, 1 seed each: the reference is right on both, the method on example 0 only.
    # A resample holding example 0 c times (and example 1 2 - c times) scores the method
    # c / 2 and the reference 1: the difference is c / 2 - 1.
    ids, gold = ("e0", "e1"), ["a", "b"]
    ref = MethodPredictions(ids, gold, {0: ["a", "b"]})
    other = MethodPredictions(ids, gold, {0: ["a", "a"]})
    result = _boot([[2, 0], [1, 1], [0, 2]], ref, other)
    # draws 0, -0.5, -1; observed difference 1/2 - 1 = -0.5
    assert result.diff == pytest.approx(-0.5)
    # numpy's linear quantiles of (-1, -0.5, 0): position 0.025 * 2 = 0.05 -> -1 + 0.05 * 0.5,
    # position 0.975 * 2 = 1.95 -> -0.5 + 0.95 * 0.5
    assert (result.ci_low, result.ci_high) == pytest.approx((-0.975, -0.025))
    # p = 2 (1 + min(#draws <= 0, #draws >= 0)) / (B + 1) = 2 (1 + 1) / 4 = 1
    assert result.p == pytest.approx(1.0)
    # example-level variance: var(0, -0.5, -1) with ddof 1 = 0.25; one seed: no seed part
    assert result.example_var == pytest.approx(0.25) and result.seed_var_unit == 0
    # McNemar: 1 pair right only for the reference, 0 for the method: exact, p = 2 * 1/2
    assert (result.mcnemar_test, result.mcnemar_p, result.discordant) == (
        "McNemar exact", 1.0, (1, 0),
    )  # fmt: skip


def test_bootstrap_distribution_of_two_examples_converges_to_the_hand_one() -> None:
    # With drawn resamples c ~ Bin(2, 1/2): -1, -0.5, 0 with 1/4, 1/2, 1/4: the 95%
    # interval is (-1, 0) and p = 2 P(draw >= 0) = 1/2.
    ids, gold = ("e0", "e1"), ["a", "b"]
    ref = MethodPredictions(ids, gold, {0: ["a", "b"]})
    other = MethodPredictions(ids, gold, {0: ["a", "a"]})
    boot = TaskBootstrap.build("t", "accuracy", {"ref": ref, "m": other}, n_resamples=4000)
    result = compare(boot, ("ref", ref), ("m", other))
    assert (result.ci_low, result.ci_high) == (-1.0, 0.0)
    assert result.p == pytest.approx(0.5, abs=0.05)
    again = TaskBootstrap.build("t", "accuracy", {"ref": ref, "m": other}, n_resamples=4000)
    assert compare(again, ("ref", ref), ("m", other)) == result  # fixed seed: reproducible


def test_rescaled_seed_weights_give_the_unbiased_variance_of_the_mean() -> None:
    # Three seed scores 0, 1, 2: s^2 = 1, so s^2 / S = 1/3. A plain bootstrap mean has
    # variance (S - 1) / S * s^2 / S = 2/9; the rescaled weights restore 1/3.
    weights = seed_weights(3, 200_000, np.random.default_rng(1))
    means = weights @ np.array([0.0, 1.0, 2.0])
    assert weights.sum(axis=1) == pytest.approx(np.ones(200_000))
    assert means.var() == pytest.approx(1 / 3, rel=0.02)
    assert seed_weights(1, 4, np.random.default_rng(1)).tolist() == [[1.0]] * 4


# ---------------------------------------------- decompositions == tasks.metrics on resamples


def _check(metric: str, gold: list, pred: list, seed: int = 0) -> None:
    dec = decomposition(metric, set(gold) | set(pred) if metric in ("mcc", "macro_f1") else ())
    x = dec.stats(gold, pred)
    rng = np.random.default_rng(seed)
    for _ in range(5):
        idx = rng.integers(0, len(gold), len(gold))
        counts = np.bincount(idx, minlength=len(gold))
        got = dec.score((counts @ x)[None, :])[0]
        want = METRICS[metric].fn([pred[i] for i in idx], [gold[i] for i in idx])
        assert got == pytest.approx(want, abs=1e-9), metric


def test_decompositions_equal_the_task_metrics_on_resamples() -> None:
    rng = np.random.default_rng(0)
    labels = ["neg", "neu", "pos"]
    gold = [labels[i] for i in rng.integers(0, 3, 60)]
    pred = [g if rng.random() < 0.6 else labels[rng.integers(0, 3)] for g in gold]
    for metric in ("accuracy", "mcc", "macro_f1"):
        _check(metric, gold, pred)
    x = rng.normal(size=50)
    _check("pearson", list(x), list(x + rng.normal(size=50)))
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    gold_ner = [" ".join(tags[i] for i in rng.integers(0, 5, 6)) for _ in range(40)]
    pred_ner = [
        " ".join(t if rng.random() < 0.7 else "O" for t in sentence.split(" "))
        for sentence in gold_ner
    ]
    split = [[s.split(" ") for s in gold_ner], [s.split(" ") for s in pred_ner]]
    for metric in ("entity_f1", "entity_precision", "entity_recall", "entity_f1_strict"):
        dec = decomposition(metric)
        x_ner = dec.stats(gold_ner, pred_ner)
        idx = rng.integers(0, 40, 40)
        got = dec.score(np.bincount(idx, minlength=40)[None, :] @ x_ner)[0]
        want = METRICS[metric].fn([split[1][i] for i in idx], [split[0][i] for i in idx])
        assert got == pytest.approx(want, abs=1e-12), metric
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran"]
    refs = [" ".join(words[i] for i in rng.integers(0, 8, 7)) for _ in range(30)]
    hyps = [" ".join(w for w in r.split() if rng.random() < 0.8) for r in refs]
    _check("bleu", refs, hyps)
    _check("bleu", refs, [h.split(" ")[0] for h in hyps])  # 1-word guesses: no 2-grams
    _check("bleu", refs, [" ".join(reversed(r.split(" "))) for r in refs])  # missed orders
    _check("bleu", refs, ["zzz"] * len(refs))  # no match at all
    _check("chrf", refs, hyps)
    assert decomposition("spearman") is None  # ranks of a resample: no sum decomposition


# --------------------------------------------------------------------------- McNemar


@pytest.mark.parametrize("b,c", [(0, 0), (3, 0), (7, 2), (12, 12), (20, 4), (30, 12), (100, 71)])
def test_mcnemar_matches_statsmodels(b: int, c: int) -> None:
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    test, p = mcnemar(b, c)
    table = [[50, b], [c, 50]]
    exact = b + c < 25
    want = sm_mcnemar(table, exact=exact, correction=True).pvalue
    assert p == pytest.approx(min(1.0, float(want)), abs=1e-12)
    assert test == ("McNemar exact" if exact else "McNemar chi2")


# ---------------------------------------------------------------- seed-level choices


def test_seed_effect_by_hand() -> None:
    # Two methods x two seeds: method effect 0.1, seed effect 0.02, no noise except 0.001 in
    # one cell. Scores a: 0.80, 0.82; b: 0.70, 0.721. Seed means 0.75, 0.7705; grand 0.76025.
    # SS_seed = 2 ((0.75 - 0.76025)^2 + (0.7705 - 0.76025)^2) = 4 * 0.01025^2 = 0.00042025;
    # the residual of every cell is +/- 0.00025: SS_err = 4 * 0.00025^2 = 2.5e-7;
    # F = 0.00042025 / 2.5e-7 = 1681 with (1, 1) df: P(F > f) = 2 / pi * atan(1 / sqrt f).
    effect = seed_effect({"a": {0: 0.80, 1: 0.82}, "b": {0: 0.70, 1: 0.721}})
    assert effect.f == pytest.approx(1681)
    assert effect.p == pytest.approx(2 / math.pi * math.atan(1 / math.sqrt(1681)))
    assert effect.p < 0.05 and effect.shared
    flat = seed_effect({"a": {0: 0.80, 1: 0.82}, "b": {0: 0.72, 1: 0.70}})
    assert not flat.shared  # the seeds move the methods in opposite directions


# ----------------------------------------------------------------------------- power


def test_power_by_hand() -> None:
    # seed part 0.0003 / 3 = 1e-4, example part 0.12 / 400 = 3e-4: SE = 0.02,
    # MDD = 2.801585 * 0.02 = 0.056032. For 0.04: budget (0.04 / 2.801585)^2 = 2.0385e-4,
    # minus 3e-4 of examples < 0: no number of seeds suffices; at 3 seeds, examples
    # 0.12 / (2.0385e-4 - 1e-4) = 1155.5 -> 1156.
    result = power(0.0003, 0.12, 3, 400, 0.04)
    assert result.mdd == pytest.approx(2.801585 * 0.02, abs=1e-6)
    assert result.seeds_needed == math.inf
    assert result.examples_needed == 1156
    assert (
        power(0.0003, 0.0, 3, 0, 0.04).examples_needed
        != power(0.0003, 0.0, 3, 0, 0.04).examples_needed
    )  # NaN


# -------------------------------------------------------------- exact rank-test nulls


def test_exact_friedman_p_values_match_the_published_table() -> None:
    # Friedman (1937) / Siegel & Castellan table of exact P(chi2_r >= x):
    # k = 3, N = 3: 6.0 -> .028 (1/36: every block ranks alike); k = 3, N = 4: 6.5 -> .042;
    # k = 4, N = 3: 7.4 -> .033, 7.0 -> .054.
    assert rank_null(3, 3).friedman_p(6.0) == pytest.approx(1 / 36)
    assert rank_null(3, 4).friedman_p(6.5) == pytest.approx(0.042, abs=5e-4)
    null = rank_null(4, 3)
    assert (null.kind, null.friedman_p(7.4), null.friedman_p(7.0)) == (
        "exact", pytest.approx(0.033, abs=5e-4), pytest.approx(0.054, abs=5e-4),
    )  # fmt: skip


def test_exact_nemenyi_critical_difference_by_hand() -> None:
    # k = 3, N = 3: a rank-sum spread of 6 (3 vs 9) needs the same order in every block,
    # P = 1/36 < 0.05; a spread of 5 has P = 1/36 + P(spread exactly 5) > 0.05. CD = 6/3.
    null = rank_null(3, 3)
    assert null.spread_p(6) == pytest.approx(1 / 36)
    assert null.spread_p(5) > 0.05
    assert null.critical_spread() == 6


def test_rank_test_uses_the_permutation_null_up_to_ten_tasks() -> None:
    rng = np.random.default_rng(0)
    scores = pd.DataFrame(rng.random((3, 21)), columns=[f"m{i:02d}" for i in range(21)])
    test = rank_test(scores)
    # issue 33: 21 methods on 3 tasks, asymptotic CD 18.1, the permutation one about 16.7
    assert test.null == "permutation" and test.cd == pytest.approx(16.7, abs=0.1)
    asymptotic = rank_test(scores, null="asymptotic")
    assert asymptotic.null == "asymptotic" and asymptotic.cd == pytest.approx(18.08, abs=0.01)
    eleven = pd.DataFrame(rng.random((11, 4)), columns=list("abcd"))
    assert rank_test(eleven).null == "asymptotic"


# ------------------------------------------------------------------ reading and report


def _write_run(
    folder: Path,
    method: str,
    seed: int,
    gold: list[str],
    pred: list[str] | None,
    split: str = "test",
) -> None:
    stem = f"polarity--m--{method}--s{seed}"
    value = float(np.mean(np.asarray(gold) == np.asarray(pred))) if pred else 0.8
    record = {
        "schema_version": 1, "run_id": stem, "status": "success",
        "created_at": "2026-12-01T10:00:00+00:00",
        "experiment": {"task": "polarity", "model": "m", "method": method, "seed": seed,
                       "weights": "pretrained", "budget_pct": None, "task_version": 1},
        "metrics": {"primary": {"name": "accuracy", "split": split, "value": value,
                                "higher_is_better": True}},
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    if pred is not None:
        file = folder / f"{stem}.predictions.parquet"
        n = len(gold)
        pd.DataFrame({
            "split": [split] * n, "example_id": [f"x{i:03d}" for i in range(n)],
            "gold": gold, "pred": pred, "prob": [None] * n,
        }).to_parquet(file)  # fmt: skip
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        counts = {"dev": 0, "test": 0} | {split: n}
        record["predictions"] = {"file": file.name, "sha256": digest, "n": counts}
    (folder / f"{stem}.json").write_text(json.dumps(record))


def _sweep(folder: Path, *, with_predictions: bool) -> Path:
    rng = np.random.default_rng(3)
    gold = [str(g) for g in rng.integers(0, 2, 120)]
    for method, skill in (("lora", 0.9), ("bitfit", 0.8), ("prompt", 0.6)):
        for seed in range(3):
            pred = [g if rng.random() < skill else str(1 - int(g)) for g in gold]
            _write_run(folder, method, seed, gold, pred if with_predictions else None)
    return folder


def test_altered_predictions_are_refused_in_one_line(tmp_path: Path) -> None:
    _sweep(tmp_path, with_predictions=True)
    record = tmp_path / "polarity--m--lora--s0.json"
    assert len(read_predictions(record)) == 120
    (tmp_path / "polarity--m--lora--s0.predictions.parquet").write_bytes(b"not the file")
    with pytest.raises(PredictionsError) as err:
        read_predictions(record)
    assert "sha256" in str(err.value) and "\n" not in str(err.value)


def test_report_columns_exist_with_predictions_and_not_without(tmp_path: Path) -> None:
    with_dir = _sweep(tmp_path / "with", with_predictions=True)
    runs = quality_runs(load_records(with_dir))
    (table,) = build_tables(aggregate(runs), predictions=paired.load_predictions(runs))
    header = to_csv([table]).splitlines()[0].split(",")
    for column in ("diff_vs_best", "diff_ci_low", "diff_ci_high", "p_vs_best", "test_vs_best"):
        assert f"polarity/{column}" in header
    assert "polarity/mcnemar_p" in header
    tests = table.tests["polarity"]
    assert set(tests["test"]) == {paired.TEST_BOOTSTRAP}
    assert (tests["ci_low"] < tests["diff"]).all() and (tests["diff"] < tests["ci_high"]).all()
    assert "paired bootstrap" in to_markdown([table])
    assert "Median width of the bootstrap intervals" in to_markdown([table])
    assert tests["seed_ci_low"].notna().all()  # the seed-level interval, for the widths

    without = _sweep(tmp_path / "without", with_predictions=False)
    (plain,) = build_tables(aggregate(quality_runs(load_records(without))))
    header = to_csv([plain]).splitlines()[0].split(",")
    assert "polarity/p_vs_best" in header and "polarity/diff_vs_best" not in header


def test_a_method_without_predictions_falls_back_to_its_seed_scores(tmp_path: Path) -> None:
    _sweep(tmp_path, with_predictions=True)
    for seed in range(3):  # prompt's records lose their predictions section
        record = tmp_path / f"polarity--m--prompt--s{seed}.json"
        value = json.loads(record.read_text())
        record.write_text(json.dumps({k: v for k, v in value.items() if k != "predictions"}))
    runs = quality_runs(load_records(tmp_path))
    predictions = paired.load_predictions(runs)
    assert ("polarity", "m", "prompt") not in predictions
    (table,) = build_tables(aggregate(runs), predictions=predictions)
    tests = table.tests["polarity"]
    effect = table.seed_effects["polarity"]
    seed_test = "paired t" if effect.shared else "Welch t"
    assert tests.loc["bitfit", "test"] == paired.TEST_BOOTSTRAP
    assert tests.loc["prompt", "test"] == seed_test
    assert f"{seed_test} (n = 3)" in to_markdown([table])


def test_report_with_reference_and_power(tmp_path: Path) -> None:
    from peftbench import cli

    results = _sweep(tmp_path / "results", with_predictions=True)
    out = tmp_path / "report"
    assert cli.main(["report", "--results", str(results), "--out", str(out),
                     "--reference", "bitfit", "--detect", "5"]) == 0  # fmt: skip
    markdown = (out / "comparison.md").read_text()
    assert "Differences from the best" in markdown and "Differences from bitfit" in markdown
    assert "Power (80% at 95%" in markdown and "; 5: " in markdown
    header = (out / "comparison.csv").read_text().splitlines()[0].split(",")
    assert "reference" in header and "polarity/diff_vs_ref" in header


def test_bad_reference_and_altered_predictions_end_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from peftbench import cli

    results = _sweep(tmp_path / "results", with_predictions=True)
    argv = ["report", "--results", str(results), "--out", str(tmp_path / "r")]
    assert cli.main([*argv, "--reference", "bitfti"]) == 2
    err = capsys.readouterr().err.strip()
    assert "bitfti" in err and "did you mean 'bitfit'" in err and "\n" not in err
    (results / "polarity--m--lora--s1.predictions.parquet").write_bytes(b"changed")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "sha256" in err and "\n" not in err


def test_many_methods_get_enough_resamples_to_survive_holm(tmp_path: Path) -> None:
    # 60 methods: with 2,000 resamples the smallest p, 2 / 2001, times Holm's 59 is 0.059,
    # and a method worse on every example would look tied. B = 2.5 * 60 / 0.05 = 3,000:
    # 2 / 3001 * 59 = 0.039.
    gold = ["1"] * 40
    _write_run(tmp_path, "best", 0, gold, ["1"] * 40)
    _write_run(tmp_path, "best", 1, gold, ["1"] * 40)
    for m in range(59):
        for seed in range(2):
            _write_run(tmp_path, f"m{m:02d}", seed, gold, ["1"] * 20 + ["0"] * 20)
    runs = quality_runs(load_records(tmp_path))
    (table,) = build_tables(aggregate(runs), predictions=paired.load_predictions(runs))
    assert table.n_resamples == 3000
    assert table.tied["polarity"] == set()
    assert table.tests["polarity"]["p_holm"].max() == pytest.approx(2 / 3001 * 59)


def test_sealed_tuning_runs_are_compared_on_their_dev_predictions(tmp_path: Path) -> None:
    # grid runs evaluate dev only: primary split dev, a predictions file of dev rows
    gold = ["1", "0"] * 30
    for method, wrong in (("lora", 3), ("bitfit", 20)):
        for seed in range(2):
            pred = [str(1 - int(g)) if i < wrong + seed else g for i, g in enumerate(gold)]
            _write_run(tmp_path, method, seed, gold, pred, split="dev")
    runs = quality_runs(load_records(tmp_path))
    predictions = paired.load_predictions(runs)
    assert len(predictions[("polarity", "m", "lora")].example_ids) == 60
    (table,) = build_tables(aggregate(runs), predictions=predictions)
    assert table.tests["polarity"].loc["bitfit", "test"] == paired.TEST_BOOTSTRAP


def test_a_column_without_example_level_tests_shows_no_empty_differences(tmp_path: Path) -> None:
    # both methods predict alike: they tie for best, nothing is tested against the best,
    # but --reference still compares them example by example
    gold = ["1", "0"] * 10
    for method in ("lora", "bitfit"):
        for seed in range(2):
            _write_run(tmp_path, method, seed, gold, list(gold))
    runs = quality_runs(load_records(tmp_path))
    predictions = paired.load_predictions(runs)
    (table,) = build_tables(aggregate(runs), predictions=predictions, reference="lora")
    markdown = to_markdown([table])
    assert "Differences from the best" not in markdown
    assert "Differences from lora" in markdown and "0.0 [0.0, 0.0] p=1 (boot)" in markdown


def test_every_pair_is_tested_and_holm_corrected_over_the_task(tmp_path: Path) -> None:
    """Two perfect methods and one wrong on half the examples: the perfect pair is not
    separated (difference 0, p = 1), each perfect one is separated from the half-wrong one
    at the smallest p a bootstrap gives, 2 / (B + 1), times Holm's 2 and 1."""
    gold = ["1"] * 40
    for method, pred in (("a", gold), ("b", gold), ("c", ["1"] * 20 + ["0"] * 20)):
        for seed in range(2):
            _write_run(tmp_path, method, seed, gold, pred)
    runs = quality_runs(load_records(tmp_path))
    agg = aggregate(runs)
    pairs = pair_tests(agg, paired.load_predictions(runs)).set_index(["better", "worse"])
    assert list(pairs.index) == [("a", "b"), ("a", "c"), ("b", "c")]  # better mean first
    assert pairs.loc[("a", "b"), ["diff", "p", "separated"]].tolist() == [0.0, 1.0, False]
    smallest = 2 / (paired.N_RESAMPLES + 1)
    assert pairs.loc[("a", "c"), "diff"] == pytest.approx(-0.5)
    assert pairs["p_holm"].tolist() == pytest.approx([1.0, 3 * smallest, 3 * smallest])
    assert pairs.loc[("b", "c"), "separated"]
    markdown = pairs_markdown(pairs.reset_index(), agg)
    assert "2 of 3 pairs separated" in markdown
    assert "| 1 | a | 100.0 |  | · | > |" in markdown
    assert "| 3 | c | 50.0 | < | < |  |" in markdown
    assert {"pairs.md", "pairs.csv"} <= {p.name for p in build_report(tmp_path)}
    page = (tmp_path / "report" / "report.html").read_text()  # the page shows them too
    assert '<section id="pairs">' in page and "2 of 3 pairs separated" in page
    assert "<tr><td>3</td><td>c</td><td>50.0</td><td>&lt;</td><td>&lt;</td><td></td></tr>" in page
