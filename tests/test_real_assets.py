"""The embedded default on the real assets: MiniLM-L6 and Pang & Lee polarity (marked slow)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from peftbench.runner import experiment
from tasks import build_task
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _default_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_polarity_reads_4000_balanced_sentences_into_a_fixed_split():
    task = build_task(_default_cfg().task)
    rows = task.read_rows()
    assert len(rows) == 4000
    assert Counter(r["label"] for r in rows) == {0: 2000, 1: 2000}
    assert not rows[0]["text"].startswith("\ufeff")  # the BOM is not part of the text
    assert all("\n" not in r["text"] for r in rows)
    sizes = {split: len(r) for split, r in task.splits.items()}
    assert sizes == {"train": 1600, "dev": 400, "test": 2000}  # version 2: half in test
    for split_rows in task.splits.values():
        assert sum(r["label"] for r in split_rows) * 2 == len(split_rows)
    # Pinned: the split (and so every reported score) changes only with a new task version.
    assert task.fingerprint == "a15bea57b1c1d147"


def test_adapter_trains_on_the_real_model_and_data(tmp_path):
    cfg = _default_cfg(
        "method=adapter",
        f"results_dir={tmp_path}",
        "tracker=none",
        "train.max_steps=60",
        "train.eval_every_steps=60",
        "train.log_every_steps=1",
    )
    summary = experiment.run(cfg)
    assert summary["status"] == "success", summary
    record = json.loads(Path(summary["path"]).read_text())
    assert record["params"]["base"] == 22_713_986  # MiniLM-L6 (22.7M) + a 2-way head
    assert record["params"]["head_modules"] == ["classifier"]
    losses = [row["train/loss"] for row in record["history"] if "train/loss" in row]
    assert len(losses) == 60
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    print(f"mean loss, steps 1-10: {first:.4f}; steps 51-60: {last:.4f}")
    assert last < first  # real training lowers the loss
    assert 0.0 <= record["metrics"]["test"]["accuracy"] <= 1.0


def test_tokenized_cache_saves_the_second_run_its_tokenization_on_bbc_news(tmp_path):
    """Long documents (median 421 tokens), the real MiniLM tokenizer: miss, then hit."""
    from functools import partial

    from peftbench.models.backbones import load_backbone
    from peftbench.runner.data_cache import cache_key, cached_encode

    cfg = _default_cfg("task=bbc-news")
    task = build_task(cfg.task)
    tokenizer = load_backbone(cfg.model, task).tokenizer
    seconds = {}
    for attempt in ("first", "second"):
        infos = [
            cached_encode(
                partial(task.encode, rows, tokenizer),
                key=cache_key(task, split, tokenizer),
                cache_dir=tmp_path,
            )[1]
            for split, rows in task.splits.items()
        ]
        assert all(info["hit"] == (attempt == "second") for info in infos)
        seconds[attempt] = sum(info["seconds"] for info in infos)
    n = sum(len(rows) for rows in task.splits.values())
    first, second = seconds["first"], seconds["second"]
    print(f"bbc-news, {n} documents: tokenize {first:.2f} s, from the cache {second:.2f} s")
    assert second < first / 2
