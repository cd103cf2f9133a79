"""The `hub` reader and the Hub task configs, on a local dataset laid out like the Hub's.

``datasets.load_dataset(path, name, revision=...)`` reads a local folder the same way as a Hub
repository: a README whose YAML header names configs and their data files. No network.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from peftbench.errors import DataError
from tasks import build_task
from tests.conftest import ROOT

WORDS = ["the", "good", "great", "fine", "dull", "bad", "film", "plot", "cast", "music"]


def _sentence(i: int) -> str:
    return " ".join(WORDS[(i * 7 + j * 3 + i // 10) % len(WORDS)] for j in range(5)) + f" {i}"


def _write_hub_folder(folder: Path, configs: dict[str, dict[str, list[dict]]]) -> Path:
    """A dataset folder with one sub-folder per config and a README naming their files."""
    header = ["---", "configs:"]
    for config, splits in configs.items():
        header += [f"- config_name: {config}", "  data_files:"]
        for split, rows in splits.items():
            path = folder / config / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            header += [f"  - split: {split}", f"    path: {config}/{split}.jsonl"]
    (folder / "README.md").write_text("\n".join([*header, "---", ""]))
    return folder


@pytest.fixture
def hub_calls(monkeypatch, tmp_path):
    """Records every load_dataset call; datasets' cache goes to a scratch folder."""
    calls = []
    real = datasets.load_dataset

    def recording(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return real(path, name, cache_dir=str(tmp_path / "hf-cache"), **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", recording)
    return calls


def _task(task_name: str, hub_id: str | Path, **source):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"task={task_name}"])
    with open_dict(cfg):
        cfg.task.source.hub_id = str(hub_id)
        cfg.task.source.update(source)
    return build_task(cfg.task)


def test_glue_task_tests_on_validation_and_holds_dev_out_of_train(tmp_path, hub_calls):
    train = [{"sentence": _sentence(i), "label": i % 2, "idx": i} for i in range(200)]
    validation = [{"sentence": _sentence(1000 + i), "label": i % 2, "idx": i} for i in range(30)]
    folder = _write_hub_folder(
        tmp_path / "glue", {"cola": {"train": train, "validation": validation}}
    )
    task = _task("cola", folder)
    splits = task.splits
    assert {k: len(v) for k, v in splits.items()} == {"train": 180, "dev": 20, "test": 30}
    assert [r["sentence"] for r in splits["test"]] == [r["sentence"] for r in validation]
    assert sum(r["label"] for r in splits["dev"]) == 10  # label-stratified hold-out
    train_texts = {r["sentence"] for r in splits["train"]}
    assert train_texts.isdisjoint(r["sentence"] for r in splits["dev"])
    assert set(splits["train"][0]) == {"sentence", "label"}  # our fields, not GLUE's idx
    # the pinned revision and the config name reach load_dataset, one call per Hub split
    revision = "bcdcba79d07bc864c1c254ccfcedcce55bcc9a8c"
    assert [(n, kw["split"], kw["revision"]) for _, n, kw in hub_calls] == [
        ("cola", "train", revision),
        ("cola", "validation", revision),
    ]
    # deterministic: the same hold-out again, a different one with another salt
    assert _task("cola", folder).splits["dev"] == splits["dev"]
    other = _task("cola", folder, dev_from_train={"fraction": 0.1, "salt": "other"})
    assert other.splits["dev"] != splits["dev"]


def test_regression_pairs_keep_float_scores(tmp_path, hub_calls):
    rows = [
        {"sentence1": _sentence(i), "sentence2": _sentence(i + 1), "label": i % 6 * 1.0}
        for i in range(50)
    ]
    folder = _write_hub_folder(
        tmp_path / "glue", {"stsb": {"train": rows, "validation": rows[:10]}}
    )
    splits = _task("stsb", folder).splits
    assert len(splits["dev"]) == 5 and len(splits["train"]) == 45
    assert all(isinstance(r["label"], float) for r in splits["test"])


def test_ner_maps_tag_ids_and_keeps_the_official_splits(tmp_path, hub_calls):
    def sentences(offset: int, n: int) -> list[dict]:
        return [
            {"tokens": ["EU", "rejects", str(offset + i)], "ner_tags": [3, 0, 0]} for i in range(n)
        ]

    folder = _write_hub_folder(
        tmp_path / "conll",
        {
            "default": {
                "train": sentences(0, 8),
                "validation": sentences(100, 3),
                "test": sentences(200, 4),
            }
        },
    )
    task = _task("conll2003", folder, name="default")
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 8, "dev": 3, "test": 4}
    assert task.splits["dev"][0] == {"tokens": ["EU", "rejects", "100"], "tags": [3, 0, 0]}
    assert task.cfg.labels[3] == "B-ORG"


def test_translation_reads_the_language_pair_of_a_translation_column(tmp_path, hub_calls):
    def pairs(n: int) -> list[dict]:
        return [{"translation": {"ro": f"o carte  {i}", "en": f"a book {i}"}} for i in range(n)]

    folder = _write_hub_folder(
        tmp_path / "wmt16",
        {"ro-en": {"train": pairs(12), "validation": pairs(3), "test": pairs(5)}},
    )
    task = _task("wmt16-ro-en", folder, revision=None)
    assert task.splits["test"][0] == {"source": "o carte 0", "target": "a book 0"}
    assert [len(task.splits[s]) for s in ("train", "dev", "test")] == [12, 3, 5]


def test_an_unreachable_hub_dataset_is_one_data_error_naming_the_fix(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    task = _task("rte", "nyu-mll/glue")
    with pytest.raises(DataError, match="needs network: run with HF_HUB_OFFLINE=0"):
        _ = task.splits


def test_a_split_name_the_task_does_not_know_is_refused(tmp_path):
    task = _task("cola", tmp_path, splits={"training": "train"})
    with pytest.raises(DataError, match="use train, dev, test"):
        _ = task.splits
