"""Classification and regression on an encoder-decoder are text-to-text, as T5 runs GLUE.

A tiny T5 built from config (a word-level tokenizer over the tiny corpus, the label words and
the digits) stands for t5-base; the Hub path is the same ``from_pretrained`` of a folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import T5ForConditionalGeneration

from peftbench.models.backbones import load_backbone
from peftbench.runner import experiment
from tasks import build_task
from tests.conftest import ASSETS
from tests.test_tasks import _compose, _regression_overrides
from tests.test_translation import save_tiny_t5

LABEL_WORDS = ["negative", "positive"]  # polarity's label names are its label words


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> Path:
    corpus = (ASSETS / "tiny_vocab.txt").read_text().split()[5:]  # the words after the specials
    return save_tiny_t5(tmp_path_factory.mktemp("tiny-t5"), [*corpus, *LABEL_WORDS, *"0123456789"])


def _t5(folder: Path) -> list[str]:
    """The t5-small config pointed at the tiny folder instead of the Hub."""
    return ["model=t5-small", "model.name=tiny-t5", "model.source.hub_id=null",
            f"model.source.path={folder}"]  # fmt: skip


def _cfg(folder: Path, tmp_path: Path, *overrides: str):
    return _compose(folder, tmp_path / "results", *_t5(folder), *overrides)


def test_classification_on_an_encoder_decoder_writes_the_label_word(tiny_t5_dir, tmp_path):
    cfg = _cfg(tiny_t5_dir, tmp_path)
    task = build_task(cfg.task)
    assert (task.head, task.peft_task_type) == ("seq2seq_lm", "SEQ_2_SEQ_LM")
    backbone = load_backbone(cfg.model, task)
    assert isinstance(backbone.model, T5ForConditionalGeneration)
    assert backbone.head_modules == []  # no new head: the LM head writes the label
    rows = task.splits["train"][:6]
    features = task.encode(rows, backbone.tokenizer)
    for row, feature in zip(rows, features, strict=True):
        word = backbone.tokenizer.convert_ids_to_tokens(feature["labels"])
        assert word == [LABEL_WORDS[row["label"]], "</s>"]
    batch = task.collate(features, backbone.tokenizer)
    assert batch["labels"].shape == (6, 2)
    assert task.references(batch) == [row["label"] for row in rows]


def test_rank_classification_picks_the_most_likely_label_word(tiny_t5_dir, tmp_path):
    cfg = _cfg(tiny_t5_dir, tmp_path)
    task = build_task(cfg.task)
    tokenizer = load_backbone(cfg.model, task).tokenizer
    batch = task.collate(task.encode(task.splits["dev"][:4], tokenizer), tokenizer)
    favourite = tokenizer.convert_tokens_to_ids(["positive", "negative", "positive", "negative"])

    def model(input_ids, attention_mask, labels):  # row i likes one word, then </s>
        logits = torch.zeros(len(input_ids), labels.shape[1], len(tokenizer))
        logits[torch.arange(len(input_ids)), 0, favourite] = 5.0
        logits[:, 1, tokenizer.eos_token_id] = 5.0
        return SimpleNamespace(logits=logits)

    assert task.predict_batch(model, batch) == [1, 0, 1, 0]


def test_label_words_that_tokenize_alike_are_refused(tiny_t5_dir, tmp_path):
    cfg = _cfg(tiny_t5_dir, tmp_path, "+task.label_words=[zzz,yyy]")  # both <unk>
    task = build_task(cfg.task)
    tokenizer = load_backbone(cfg.model, task).tokenizer
    with pytest.raises(ValueError, match=r"label_words \['zzz', 'yyy'\].*the same tokens"):
        task.encode(task.splits["train"][:2], tokenizer)


@pytest.mark.parametrize("method", ["prompt", "prefix", "lora", "adapter"])
def test_prompt_learning_and_weight_methods_train_t5_on_classification(
    method, tiny_t5_dir, tmp_path
):
    cfg = _cfg(tiny_t5_dir, tmp_path, f"method={method}")
    summary = experiment.run(cfg)
    assert summary["status"] == "success", summary
    record = json.loads(Path(summary["path"]).read_text())
    assert record["metrics"]["primary"]["name"] == "accuracy"
    assert 0.0 <= record["metrics"]["test"]["accuracy"] <= 1.0
    assert 0 < record["params"]["trainable"] < record["params"]["total"]


def test_regression_on_an_encoder_decoder_writes_the_score(tiny_t5_dir, tmp_path):
    cfg = _cfg(tiny_t5_dir, tmp_path, *_regression_overrides())
    task = build_task(cfg.task)
    tokenizer = load_backbone(cfg.model, task).tokenizer
    assert [task.target_text(s) for s in (3.77, 0.0, 4.95, 5.0)] == ["3.8", "0.0", "5.0", "5.0"]
    assert [task._number(t) for t in ("3.8", "3 . 8", "good", "nan")] == [3.8, 3.8, -1.0, -1.0]
    rows = task.splits["train"][:4]
    batch = task.collate(task.encode(rows, tokenizer), tokenizer)
    # scored against the true floats, not the 0.2-rounded targets the model is trained on
    assert task.references(batch) == [float(row["label"]) for row in rows]


def test_a_regression_run_on_t5_completes_with_prefix_tuning(tiny_t5_dir, tmp_path):
    cfg = _cfg(tiny_t5_dir, tmp_path, "method=prefix", *_regression_overrides())
    summary = experiment.run(cfg)
    assert summary["status"] == "success", summary
    record = json.loads(Path(summary["path"]).read_text())
    assert record["metrics"]["primary"]["name"] == "pearson"


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        (["model=t5-small", "task=sst2"], True),  # text-to-text: no task head
        (["model=t5-small", "task=bible-de-en"], True),  # generation: no task head
        (["model=minilm2minilm", "task=bible-de-en"], False),  # the new cross-attention
        (["model=minilm-l6", "task=polarity"], False),  # a classifier head
    ],
)
def test_linear_probe_is_refused_only_where_there_is_no_head(overrides, refused):
    from hydra import compose, initialize_config_dir

    from peftbench.config.checks import validate
    from peftbench.errors import ConfigError
    from tests.conftest import ROOT

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, "method=linear"])
    if refused:
        with pytest.raises(ConfigError, match="trains only a task head"):
            validate(cfg)
    else:
        validate(cfg)
