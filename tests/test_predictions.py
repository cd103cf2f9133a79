"""Issue 33, the run side: per-example predictions beside every record, a sealed test split
for tuning stages, and collapsed runs flagged (tiny BERT on tests/assets/tiny_polarity.csv)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from peftbench.records.predictions import PredictionsError, example_id, example_ids
from peftbench.records.store import load_predictions
from tests.conftest import ASSETS, save_tiny_bert

#: full fine-tuning of the tiny BERT for 40 steps learns the tiny corpus (dev 1.0 here)
LEARNS = ("method=full", "method.lr=1e-3", "train.max_steps=40", "train.eval_every_steps=10")


def _run(compose, *overrides: str) -> tuple[dict, Path]:
    from peftbench.runner.experiment import run

    out = run(compose(*overrides))
    path = Path(out["path"])
    return json.loads(path.read_text()), path


def _task(compose):
    from tasks import build_task

    return build_task(compose().task, seed=0)


def test_a_run_writes_every_dev_and_test_prediction_with_stable_ids(compose):
    record, path = _run(compose, *LEARNS)
    section = record["predictions"]
    table = path.parent / section["file"]
    assert section["file"] == path.name.removesuffix(".json") + ".predictions.parquet"
    assert section["sha256"] == hashlib.sha256(table.read_bytes()).hexdigest()
    frame = load_predictions(path, record)
    assert list(frame.columns) == ["split", "example_id", "gold", "pred", "prob"]
    task = _task(compose)
    for split in ("dev", "test"):
        rows = frame[frame["split"] == split]
        assert (
            section["n"][split]
            == len(rows)
            == len(task.splits[split])
            == record["data"]["n"][split]
        )
        assert sorted(rows["example_id"]) == sorted(example_ids(task, task.splits[split]))
        assert rows["example_id"].is_unique
        # the file's gold is the split's own label, by id
        gold = dict(zip(example_ids(task, task.splits[split]), task.splits[split], strict=True))
        pairs = zip(rows["example_id"], rows["gold"], strict=True)
        assert all(task.labels[gold[i]["label"]] == g for i, g in pairs)
    assert frame["gold"].map(type).eq(str).all() and frame["pred"].isin(task.labels).all()
    assert frame["prob"].between(0.5, 1.0).all()  # the predicted class of two: p >= 1/2
    # dev predictions are those of the selected step: their accuracy is the recorded dev score
    dev = frame[frame["split"] == "dev"]
    assert (dev["gold"] == dev["pred"]).mean() == pytest.approx(
        record["metrics"]["dev"]["accuracy"]
    )
    test = frame[frame["split"] == "test"]
    assert (test["gold"] == test["pred"]).mean() == pytest.approx(
        record["metrics"]["test"]["accuracy"]
    )
    # another recipe (another method, another run) names the same examples alike
    other, other_path = _run(compose, "method=lora")
    again = load_predictions(other_path, other)
    assert set(again["example_id"]) == set(frame["example_id"])


def test_example_id_is_the_sha256_of_a_canonical_json_and_repeats_stay_unique():
    text = '{"input":{"sentence":"é good"},"task":"polarity","task_version":1}'
    expected = hashlib.sha256(text.encode()).hexdigest()[:16]
    assert example_id("polarity", 1, {"sentence": "é good"}) == expected

    class Task:
        name, version, kind = "polarity", 1, "classification"

        class cfg:  # noqa: N801
            text_fields = ["sentence"]

    rows = [{"sentence": "a", "label": 0}, {"sentence": "a", "label": 1}, {"sentence": "b"}]
    ids = example_ids(Task, rows)
    assert ids[0] == example_id("polarity", 1, {"sentence": "a"}) and len(set(ids)) == 3
    assert example_id("polarity", 2, {"sentence": "a"}) != ids[0]  # the task version counts


def test_a_predictions_file_whose_hash_differs_is_refused_in_one_line(compose):
    record, path = _run(compose)
    table = path.parent / record["predictions"]["file"]
    frame = pd.read_parquet(table)
    frame.loc[0, "pred"] = "positive" if frame.loc[0, "pred"] == "negative" else "negative"
    frame.to_parquet(table, index=False)
    with pytest.raises(PredictionsError, match=r"sha256 [0-9a-f]{16} differs") as error:
        load_predictions(path, record)
    assert isinstance(error.value, ValueError) and "\n" not in str(error.value)
    table.unlink()
    with pytest.raises(PredictionsError, match="predictions file missing"):
        load_predictions(path, record)
    # a record without predictions (older code) loads as before: no table
    from peftbench.records.schema import Record

    del record["predictions"]
    assert load_predictions(path, record) is None
    assert Record.from_json(record).predictions is None


def test_a_sealed_run_records_no_test_metric_and_no_test_prediction(compose):
    record, path = _run(compose, "train.evaluate_test=false")
    metrics = record["metrics"]
    assert metrics["test"] is None and metrics["primary"]["split"] == "dev"
    assert metrics["primary"]["value"] == metrics["dev"]["accuracy"]
    assert not any(k.startswith("test/") for row in record["history"] for k in row)
    assert "test" not in record["quality"]["baseline"]
    frame = load_predictions(path, record)
    assert set(frame["split"]) == {"dev"} and record["predictions"]["n"]["test"] == 0
    assert record["experiment"]["recipe"]["train.evaluate_test"] is False
    # another id than the unsealed run: a final run of this seed is not skipped as done
    opened, _ = _run(compose)
    assert opened["run_id"] != record["run_id"]
    assert "train.evaluate_test" not in opened["experiment"]["recipe"]  # as before the key


def test_a_run_at_a_far_too_high_lr_is_flagged_collapsed_and_stays_a_success(compose):
    from peftbench.runner.experiment import run

    sane, _ = _run(compose, *LEARNS)
    assert sane["quality"]["collapsed"] is False and sane["quality"]["reason"] is None
    high = (*LEARNS[:1], "method.lr=3.0", *LEARNS[2:])
    record, _ = _run(compose, *high)
    assert record["status"] == "success"
    quality = record["quality"]
    assert quality["collapsed"] is True
    assert "one class at every evaluation" in quality["reason"]
    assert quality["baseline"]["dev"] == {
        "metric": "accuracy",
        "value": 0.5,
        "prediction": "negative",
        "margin": pytest.approx(1.645 * (0.25 / record["data"]["n"]["dev"]) ** 0.5),
    }
    assert run(compose(*high))["status"] == "skipped"  # done: the same recipe collapses again


def test_collapse_rules_for_every_kind():
    from peftbench.measure.quality import baseline, collapse_reason, units

    class Ner:
        kind, labels, primary_metric = "token_classification", ["O", "B-X", "I-X"], "entity_f1"
        higher_is_better, metric_impl = True, "builtin"

    refs = [["O", "B-X", "I-X"], ["B-X", "O"]]
    assert units(Ner, [["O", "O", "O"], ["O", "O"]]) == {"O"}
    best = baseline(Ner, refs)
    assert best["metric"] == "entity_f1" and best["value"] < 1.0
    # tags vary but entity F1 never beats the best constant tagging: collapsed
    evaluations = [{"step": 5, "distinct": 2, "value": best["value"]}]
    assert "never beat the constant prediction" in collapse_reason(Ner, evaluations, best)
    evaluations.append({"step": 10, "distinct": 3, "value": best["value"] + 0.1})
    assert collapse_reason(Ner, evaluations, best) is None
    # a kind without a constant baseline (translation) is judged by rule 1 only
    assert collapse_reason(Ner, [{"step": 1, "distinct": 4, "value": 0.0}], None) is None
    assert best["margin"] == 0.0  # entity F1: no closed-form chance spread, no margin


def test_accuracy_near_the_majority_rate_counts_as_collapsed():
    """Issue 34's UniPELT seed 0: dev 0.5175 on 400 balanced examples, two classes
    predicted, 'beat' the constant 0.5 by 0.0175; chance alone reaches +0.041."""
    from peftbench.measure.quality import baseline, collapse_reason

    class Binary:
        kind, labels, primary_metric = "classification", ["neg", "pos"], "accuracy"
        higher_is_better, metric_impl = True, "builtin"

    best = baseline(Binary, [0, 1] * 200)
    assert best["value"] == 0.5 and best["margin"] == pytest.approx(0.0411, abs=1e-4)
    near_chance = [{"step": s, "distinct": 2, "value": 0.5175} for s in (100, 200, 400)]
    assert "by more than chance (+0.0411)" in collapse_reason(Binary, near_chance, best)
    learnt = [*near_chance, {"step": 500, "distinct": 2, "value": 0.545}]
    assert collapse_reason(Binary, learnt, best) is None


@pytest.fixture(scope="module")
def wordpiece_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/test_tasks.py's tiny BERT whose vocabulary splits words into sub-words."""
    folder = tmp_path_factory.mktemp("wordpiece-bert")
    vocab = folder / "vocab.txt"
    vocab.write_text((ASSETS / "tiny_vocab.txt").read_text().rstrip("\n") + "\n##s\n##ing\n")
    return save_tiny_bert(folder, vocab, max_positions=128)


def test_ner_and_regression_runs_write_their_kind_of_predictions(wordpiece_dir, tmp_path):
    from peftbench.runner import experiment
    from tests.test_tasks import _compose, _regression_overrides, _tiny_cfg

    cfg = _tiny_cfg("wnut16", wordpiece_dir, tmp_path, "method=lora")
    path = Path(experiment.run(cfg)["path"])
    record = json.loads(path.read_text())
    frame = load_predictions(path, record)
    assert record["predictions"]["n"] == {"dev": 6, "test": 6}
    assert frame["example_id"].is_unique  # the fixture repeats sentences: repeats numbered
    assert frame["prob"].isna().all() and frame["gold"].str.split(" ").map(len).eq(5).all()
    assert frame["pred"].str.split(" ").map(len).eq(5).all()  # one tag per word
    assert record["quality"]["baseline"]["dev"]["metric"] == "entity_f1"

    cfg = _compose(wordpiece_dir, tmp_path / "sts", "method=lora", *_regression_overrides())
    path = Path(experiment.run(cfg)["path"])
    record = json.loads(path.read_text())
    frame = load_predictions(path, record)
    assert str(frame["gold"].dtype) == str(frame["pred"].dtype) == "float64"
    assert frame["prob"].isna().all() and len(frame) == sum(record["predictions"]["n"].values())
