"""Each metric as its benchmark reports it (issue 16): conlleval NER, raw-text BLEU, STS-B floats.

Every test here fails on the behaviour the issue reported (named in each docstring).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from peftbench.models.backbones import load_backbone
from tasks import build_task
from tasks.metrics import compute
from tests.test_tasks import _regression_overrides
from tests.test_text_to_text import _cfg as _t5_cfg
from tests.test_text_to_text import tiny_t5_dir  # noqa: F401  (fixture)
from tests.test_translation import _setup, tiny_db, tiny_models  # noqa: F401  (fixtures)

TASKS = Path(__file__).resolve().parent.parent / "conf" / "task"


# -- NER: conlleval-compatible primary, strict beside it ------------------------------------------
def test_entity_f1_accepts_a_span_opening_with_i_as_conlleval_does():
    """seqeval strict mode rejected an entity that opens with I- (conlleval accepts it)."""
    refs = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    preds = [["I-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    scores = compute(["entity_f1", "entity_f1_strict"], preds, refs)
    assert scores["entity_f1"] == 1.0  # conlleval: I-PER after O opens a PER entity
    assert scores["entity_f1_strict"] == pytest.approx(0.8)  # strict: that span is no entity


def test_conlleval_reading_still_needs_type_and_boundaries():
    refs = [["B-PER", "I-PER", "O"], ["B-LOC", "I-LOC"]]
    preds = [["B-PER", "O", "O"], ["I-ORG", "I-ORG"]]  # PER cut short, LOC typed ORG
    assert compute(["entity_f1"], preds, refs)["entity_f1"] == 0.0


@pytest.mark.parametrize("name", ["conll2003", "wnut16"])
def test_ner_tasks_record_both_scores_and_rank_by_the_conlleval_one(name):
    cfg = OmegaConf.load(TASKS / f"{name}.yaml")
    assert cfg.primary_metric == "entity_f1"
    assert {"entity_f1", "entity_f1_strict"} <= set(cfg.metrics)
    assert cfg.version >= 2  # the primary score's meaning changed


# -- translation: raw reference text ------------------------------------------------------------
def test_translation_is_scored_against_the_raw_target_text(tiny_models, tiny_db, tmp_path):  # noqa: F811
    """References were the label ids decoded back: lowercased, [UNK] dropped, truncated."""
    _, task, backbone = _setup("warm_start", tiny_models, tiny_db, tmp_path)
    tokenizer = backbone.tokenizer  # uncased BERT WordPiece, as MiniLM's
    rows = task.splits["dev"][:3]
    raw = "The GOOD film is Zanzibar, a lovely story the film is great the film was fine"
    rows[0]["target"] = raw  # cased, an out-of-vocabulary word, longer than max_target_length
    batch = task.collate(task.encode(rows, tokenizer), tokenizer)
    refs = task.references(batch)
    assert refs[0] == raw
    assert refs[1:] == [row["target"] for row in rows[1:]]
    decoded = tokenizer.decode(
        [t for t in batch["labels"][0].tolist() if t >= 0], skip_special_tokens=True
    )
    assert decoded != raw  # what was scored before: a different, easier reference


def test_identically_encoded_rows_hand_out_each_raw_reference_once_per_pass(
    tiny_models,  # noqa: F811
    tiny_db,  # noqa: F811
    tmp_path,
):
    _, task, backbone = _setup("warm_start", tiny_models, tiny_db, tmp_path)
    tokenizer = backbone.tokenizer
    dev = task.splits["dev"]
    dev[1]["source"] = dev[0]["source"]
    dev[0]["target"], dev[1]["target"] = "The film is good", "the film is GOOD"  # encode alike
    batch = task.collate(task.encode(dev[:2], tokenizer), tokenizer)
    assert sorted(task.references(batch)) == sorted([dev[0]["target"], dev[1]["target"]])


# -- STS-B on T5: the true floats ---------------------------------------------------------------
def test_text_to_text_regression_is_scored_against_the_true_scores(tiny_t5_dir, tmp_path):  # noqa: F811
    """References were the 0.2-rounded target texts parsed back ("3.8" for 3.77)."""
    cfg = _t5_cfg(tiny_t5_dir, tmp_path, *_regression_overrides())
    task = build_task(cfg.task)
    tokenizer = load_backbone(cfg.model, task).tokenizer
    rows = task.splits["test"][:3]
    rows[0]["label"] = 3.77
    batch = task.collate(task.encode(rows, tokenizer), tokenizer)
    assert task.target_text(3.77) == "3.8"  # what the model is trained to write
    refs = task.references(batch)
    assert refs[0] == 3.77 and refs == [float(r["label"]) for r in rows]


def test_stsb_and_translation_task_versions_are_bumped():
    for name in ("stsb", "bible-de-en", "bible-fr-en", "bible-ro-en", "wmt16-ro-en"):
        assert OmegaConf.load(TASKS / f"{name}.yaml").version >= 2, name
