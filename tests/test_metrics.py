"""Every metric on hand-computed cases, plus its best and worst value and its direction."""

from __future__ import annotations

import math

import pytest

from tasks.metrics import METRICS, compute

# Binary case used below, worked by hand. refs 0 1 0 0 / preds 0 1 1 0:
# class 0: tp 2, fp 0, fn 1 -> P 1, R 2/3, F1 0.8; class 1: tp 1, fp 1, fn 0 -> F1 2/3.
PREDS, REFS = [0, 1, 1, 0], [0, 1, 0, 0]


def test_accuracy_counts_matches():
    assert compute(["accuracy"], PREDS, REFS)["accuracy"] == pytest.approx(0.75)


def test_macro_f1_averages_per_class_f1():
    assert compute(["macro_f1"], PREDS, REFS)["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)


def test_f1_is_the_positive_class_f1_as_glue_reports_it():
    assert compute(["f1"], PREDS, REFS)["f1"] == pytest.approx(2 / 3)  # class 1 above


def test_mcc_matches_the_formula():
    # tp 1, tn 2, fp 1, fn 0: (1*2 - 1*0) / sqrt((1+1)(1+0)(2+1)(2+0)) = 2 / sqrt(12)
    assert compute(["mcc"], PREDS, REFS)["mcc"] == pytest.approx(2 / math.sqrt(12))


def test_pearson_matches_the_formula():
    # x - mean: -1 0 1; y - mean: -4/3 -1/3 5/3; cov 3, var_x 2, var_y 42/9.
    value = compute(["pearson"], [1.0, 2.0, 3.0], [1.0, 2.0, 4.0])["pearson"]
    assert value == pytest.approx(3 / math.sqrt(2 * 42 / 9))


def test_spearman_uses_ranks():
    # rank differences 0, -1, 1: rho = 1 - 6 * 2 / (3 * (9 - 1)) = 0.5
    assert compute(["spearman"], [1.0, 2.0, 3.0], [1.0, 3.0, 2.0])["spearman"] == 0.5
    # A monotone but non-linear relation is perfect for Spearman, not for Pearson.
    preds, refs = [1.0, 2.0, 3.0, 4.0], [1.0, 4.0, 9.0, 100.0]
    assert compute(["spearman"], preds, refs)["spearman"] == pytest.approx(1.0)
    assert compute(["pearson"], preds, refs)["pearson"] < 0.95


@pytest.mark.parametrize("name", ["pearson", "spearman"])
def test_a_constant_prediction_scores_zero_not_nan(name):
    assert compute([name], [0.5, 0.5, 0.5], [1.0, 2.0, 3.0])[name] == 0.0


def test_entity_scores_need_the_whole_span():
    refs = [["B-PER", "I-PER", "O", "B-LOC"]]
    preds = [["B-PER", "O", "O", "B-LOC"]]  # PER is cut short: only LOC is right
    scores = compute(["entity_precision", "entity_recall", "entity_f1"], preds, refs)
    assert scores == {"entity_precision": 0.5, "entity_recall": 0.5, "entity_f1": 0.5}


def test_strict_entity_scores_are_strict_iob2():
    refs = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    # A span that starts with I- is no entity in strict IOB2 (conlleval would accept it).
    preds = [["I-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    names = ["entity_precision_strict", "entity_recall_strict", "entity_f1_strict"]
    scores = {k.removesuffix("_strict"): v for k, v in compute(names, preds, refs).items()}
    assert scores["entity_precision"] == 1.0
    assert scores["entity_recall"] == pytest.approx(2 / 3)
    assert scores["entity_f1"] == pytest.approx(0.8)


def test_entity_type_must_match():
    scores = compute(["entity_f1"], [["B-ORG", "I-ORG"]], [["B-PER", "I-PER"]])
    assert scores["entity_f1"] == 0.0


def test_bleu_is_the_geometric_mean_of_n_gram_precisions():
    # hyp "the cat sat on a mat" vs ref "the cat sat on the mat" (6 words each, BP = 1):
    # 1-grams 5/6, 2-grams 3/5, 3-grams 2/4, 4-grams 1/3 -> (1/12) ** (1/4) on a 0-100 scale.
    value = compute(["bleu"], ["the cat sat on a mat"], ["the cat sat on the mat"])["bleu"]
    assert value == pytest.approx(100 * (1 / 12) ** 0.25)


def test_bleu_penalises_short_output():
    # 4 of the 6 reference words, all n-grams right: BP = exp(1 - 6/4).
    value = compute(["bleu"], ["the cat sat on"], ["the cat sat on the mat"])["bleu"]
    assert value == pytest.approx(100 * math.exp(1 - 6 / 4))


def test_chrf_averages_character_n_gram_f2_over_orders_present():
    # "abc" vs "abd": 1-grams P = R = 2/3, 2-grams 1/2, 3-grams 0; orders 4-6 exist on neither
    # side and do not count: (2/3 + 1/2 + 0) / 3.
    assert compute(["chrf"], ["abc"], ["abd"])["chrf"] == pytest.approx(100 * 7 / 18)


LABELS = [0, 1, 0, 1]
SCORES = [1.0, 2.0, 3.0, 4.0]
TAGS = [["B-PER", "I-PER", "O"], ["O", "B-LOC"]]
TEXTS = ["in the beginning god created the heavens .", "and the earth was empty ."]
#: name -> (references, all-wrong predictions); a perfect prediction is the references.
CASES = {
    "accuracy": (LABELS, [1, 0, 1, 0]),
    "macro_f1": (LABELS, [1, 0, 1, 0]),
    "f1": (LABELS, [1, 0, 1, 0]),
    "mcc": (LABELS, [1, 0, 1, 0]),
    "pearson": (SCORES, SCORES[::-1]),
    "spearman": (SCORES, SCORES[::-1]),
    "entity_precision": (TAGS, [["O", "B-LOC", "O"], ["B-PER", "O"]]),
    "entity_recall": (TAGS, [["O", "B-LOC", "O"], ["B-PER", "O"]]),
    "entity_f1": (TAGS, [["O", "B-LOC", "O"], ["B-PER", "O"]]),
    "entity_precision_strict": (TAGS, [["O", "B-LOC", "O"], ["B-PER", "O"]]),
    "entity_recall_strict": (TAGS, [["O", "B-LOC", "O"], ["B-PER", "O"]]),
    "entity_f1_strict": (TAGS, [["O", "B-LOC", "O"], ["B-PER", "O"]]),
    "bleu": (TEXTS, ["xyz qq", "zzz"]),
    "chrf": (TEXTS, ["xyz qq", "zzz"]),
}


def test_every_metric_has_a_case():
    assert set(CASES) == set(METRICS)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_perfect_scores_best_and_all_wrong_scores_worst(name):
    metric, (refs, wrong) = METRICS[name], CASES[name]
    assert metric.higher_is_better and metric.best > metric.worst
    assert compute([name], refs, refs)[name] == pytest.approx(metric.best)
    assert compute([name], wrong, refs)[name] == pytest.approx(metric.worst)
