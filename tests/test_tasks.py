"""Task contract: every conf/task/*.yaml, its readers, its split and its bad-input errors.

Fast tests run on tiny fixtures and a tiny BERT whose vocabulary has sub-word pieces (so the
first-sub-word label alignment is exercised); the ``slow`` ones load each offline task's real
data and train a few steps of MiniLM-L6 on it.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from peftbench.errors import DataError
from peftbench.models.backbones import load_backbone
from peftbench.runner import experiment
from tasks import build_task
from tasks.metrics import METRICS
from tasks.readers import READERS
from tasks.splits import grouped_split
from tasks.token_classification import IGNORE_INDEX, align_labels
from tests.conftest import ASSETS, ROOT, save_tiny_bert, tiny_overrides

DATA = Path(__file__).resolve().parent / "fixtures" / "data"
TASK_NAMES = sorted(p.stem for p in (ROOT / "conf" / "task").glob("*.yaml"))
#: Tasks the tiny BERT can run (translation has its own contract: tests/test_translation.py;
#: the decoder-only synthetic_lm kind its own: tests/test_gpu_check.py).
ENCODER_TASKS = [
    n
    for n in TASK_NAMES
    if OmegaConf.load(ROOT / f"conf/task/{n}.yaml").kind not in ("translation", "synthetic_lm")
]
N_TINY = 60  # rows per fixture: every split non-empty even with 5 classes
WORDS = ["the", "good", "great", "fine", "lovely", "superb", "moving", "funny", "smart", "bad"]


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def wordpiece_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT whose vocabulary splits "films" into "film" + "##s"."""
    folder = tmp_path_factory.mktemp("wordpiece-bert")
    vocab = folder / "vocab.txt"
    vocab.write_text((ASSETS / "tiny_vocab.txt").read_text().rstrip("\n") + "\n##s\n##ing\n")
    return save_tiny_bert(folder, vocab, max_positions=128)


def _sentence(i: int, n: int = 4) -> str:
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(n))


def _tiny_source(task_cfg, folder: Path) -> dict:
    """A tiny JSONL file of the task's kind, fields and labels, read by the `table` reader."""
    labels = list(task_cfg.get("labels") or [])
    path = folder / f"{task_cfg.name}.jsonl"
    if task_cfg.kind == "token_classification":
        begin = next(tag for tag in labels if tag.startswith("B-"))
        inside = "I-" + begin[2:]
        records = [
            {
                "tokens": ["the", "films", "story", "is", _sentence(i, 1)],
                "tags": ["O", begin, inside, "O", "O"],
            }
            for i in range(N_TINY)
        ]
        source = {"label_type": "tags", "tokens_column": "tokens", "label_column": "tags"}
    else:
        fields = list(task_cfg.text_fields)
        regression = task_cfg.kind == "regression"  # a 0-5 score (STS-B) instead of a label
        records = [
            {
                **{f: _sentence(i + k) for k, f in enumerate(fields)},
                "y": float(i % 6) if regression else labels[i % len(labels)],
            }
            for i in range(N_TINY)
        ]
        label_type = "float" if regression else "class"
        source = {"label_type": label_type, "text_columns": fields, "label_column": "y"}
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"reader": "table", "path": str(path), "asset": None, "file": None,
            "label_values": labels, **source}  # fmt: skip


def _compose(model_dir: Path, results: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=tiny_overrides(model_dir, results, *overrides))


def _tiny_cfg(name: str, model_dir: Path, tmp_path: Path, *overrides: str):
    cfg = _compose(model_dir, tmp_path / "results", f"task={name}", *overrides)
    with open_dict(cfg):
        cfg.task.source = _tiny_source(cfg.task, tmp_path)
        cfg.task.split.by = None  # the fixture has no groups; grouped_split is tested apart
    return cfg


# -- the contract, per task config --------------------------------------------------------------
@pytest.mark.parametrize("name", TASK_NAMES)
def test_task_config_is_complete(name):
    cfg = OmegaConf.load(ROOT / "conf" / "task" / f"{name}.yaml")
    assert cfg.name == name and int(cfg.version) >= 1
    assert (ROOT / "tasks" / "cards" / cfg.card).is_file()
    assert cfg.source.reader in READERS
    assert cfg.primary_metric in cfg.metrics and set(cfg.metrics) <= set(METRICS)
    card = (ROOT / "tasks" / "cards" / cfg.card).read_text().lower()
    for field in ("source", "licence", "split", "version", "primary metric"):
        assert field in card, f"{cfg.card} lacks {field}"


@pytest.mark.parametrize("name", ENCODER_TASKS)
def test_task_contract_on_a_tiny_fixture(name, wordpiece_bert_dir, tmp_path):
    cfg = _tiny_cfg(name, wordpiece_bert_dir, tmp_path)
    task = build_task(cfg.task)
    assert sum(len(rows) for rows in task.splits.values()) == N_TINY
    assert all(task.splits.values())
    backbone = load_backbone(cfg.model, task)
    assert backbone.head_modules == ["classifier"]
    rows = task.splits["train"][::8]  # rows of every label (a split is ordered by label)
    features = task.encode(rows, backbone.tokenizer)
    batch = task.collate(features, backbone.tokenizer)
    width = max(len(f["input_ids"]) for f in features)
    assert batch["input_ids"].shape == (len(rows), width)
    if task.kind == "token_classification":
        assert batch["labels"].shape == (len(rows), width)
        assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    with torch.no_grad():
        outputs = backbone.model(**batch)
    preds, refs = task.predict(outputs, batch), task.references(batch)
    assert len(preds) == len(refs) == len(rows)
    _check_metrics(task, refs)


def _check_metrics(task, refs: list) -> None:
    """Perfect predictions score every metric's best; all-wrong ones the primary's worst."""
    perfect = task.compute_metrics(refs, refs)
    for name, value in perfect.items():
        assert value == pytest.approx(METRICS[name].best), name
    if task.kind == "token_classification":
        wrong = [["O"] * len(r) for r in refs]  # every entity missed
    elif task.kind == "regression":
        wrong = [-r for r in refs]  # perfectly anti-correlated
    else:
        wrong = [(r + 1) % len(task.labels) for r in refs]
    primary = task.compute_metrics(wrong, refs)[task.primary_metric]
    assert primary == pytest.approx(METRICS[task.primary_metric].worst)


# -- token classification -----------------------------------------------------------------------
def test_align_labels_puts_the_tag_on_the_first_sub_word_only():
    #         [CLS]  the  film ##s  is  [SEP]
    word_ids = [None, 0, 1, 1, 2, None]
    assert align_labels(word_ids, [0, 3, 0]) == [-100, 0, 3, -100, 0, -100]


def test_ner_encoding_ignores_non_first_sub_words(wordpiece_bert_dir, tmp_path):
    cfg = _tiny_cfg("wnut16", wordpiece_bert_dir, tmp_path)
    task = build_task(cfg.task)
    tokenizer = load_backbone(cfg.model, task).tokenizer
    b_person, i_person = task.labels.index("B-person"), task.labels.index("I-person")
    row = {"tokens": ["the", "films", "cast"], "tags": [0, b_person, i_person]}
    (feature,) = task.encode([row], tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(feature["input_ids"])
    assert tokens == ["[CLS]", "the", "film", "##s", "cast", "[SEP]"]
    assert feature["labels"] == [-100, 0, b_person, -100, i_person, -100]


def test_ner_predictions_are_read_at_first_sub_words(wordpiece_bert_dir, tmp_path):
    cfg = _tiny_cfg("wnut16", wordpiece_bert_dir, tmp_path)
    task = build_task(cfg.task)
    labels = torch.tensor([[-100, 0, 13, -100, 14, -100, -100]])
    logits = torch.zeros(1, 7, len(task.labels))
    logits[0, :, 13] = 1.0  # predicts B-person everywhere, including ignored positions
    outputs = type("Out", (), {"logits": logits})()
    assert task.predict(outputs, {"labels": labels}) == [["B-person"] * 3]
    assert task.references({"labels": labels}) == [["O", "B-person", "I-person"]]


def test_ner_collate_pads_labels_on_the_padding_side(wordpiece_bert_dir, tmp_path):
    cfg = _tiny_cfg("wnut16", wordpiece_bert_dir, tmp_path)
    task = build_task(cfg.task)
    tokenizer = load_backbone(cfg.model, task).tokenizer
    features = [
        {"input_ids": [2, 6, 3], "attention_mask": [1, 1, 1], "labels": [-100, 1, -100]},
        {"input_ids": [2, 3], "attention_mask": [1, 1], "labels": [-100, -100]},
    ]
    tokenizer.padding_side = "left"
    batch = task.collate(features, tokenizer)
    assert batch["labels"].tolist() == [[-100, 1, -100], [-100, -100, -100]]
    assert batch["input_ids"][1].tolist()[1:] == [2, 3]
    tokenizer.padding_side = "right"
    assert task.collate(features, tokenizer)["input_ids"][1].tolist()[:2] == [2, 3]


# -- sentence pairs and regression --------------------------------------------------------------
def test_a_pair_is_encoded_as_two_segments(wordpiece_bert_dir, tmp_path):
    cfg = _tiny_cfg("verse-paraphrase", wordpiece_bert_dir, tmp_path)
    task = build_task(cfg.task)
    tokenizer = load_backbone(cfg.model, task).tokenizer
    (feature,) = task.encode(
        [{"sentence1": "the film", "sentence2": "good", "label": 1}], tokenizer
    )
    tokens = tokenizer.convert_ids_to_tokens(feature["input_ids"])
    assert tokens == ["[CLS]", "the", "film", "[SEP]", "good", "[SEP]"]
    assert feature["token_type_ids"] == [0, 0, 0, 0, 1, 1] and feature["labels"] == 1


def _regression_overrides() -> list[str]:
    return [
        "task=local-table",
        "task.kind=regression",
        f"task.source.path={DATA / 'tiny_sts.csv'}",
        "task.text_fields=[sentence1,sentence2]",
        "task.source.label_column=score",
        "task.source.label_type=float",
        "task.metrics=[pearson,spearman]",
        "task.primary_metric=pearson",
    ]


def test_regression_task_has_one_output_and_mse_loss(wordpiece_bert_dir, tmp_path):
    cfg = _compose(wordpiece_bert_dir, tmp_path, *_regression_overrides())
    task = build_task(cfg.task)
    assert sum(len(r) for r in task.splits.values()) == 30
    backbone = load_backbone(cfg.model, task)
    assert backbone.model.config.num_labels == 1
    features = task.encode(task.splits["train"][:4], backbone.tokenizer)
    batch = task.collate(features, backbone.tokenizer)
    assert batch["labels"].dtype == torch.float32
    outputs = backbone.model(**batch)
    preds = task.predict(outputs, batch)
    expected = torch.nn.functional.mse_loss(outputs.logits.squeeze(-1), batch["labels"])
    assert outputs.loss.item() == pytest.approx(expected.item())
    assert all(isinstance(p, float) for p in preds)
    assert task.compute_metrics(task.references(batch), task.references(batch))["pearson"] == 1.0


# -- end to end on the tiny model: one run per new kind -----------------------------------------
@pytest.mark.parametrize("name", ["wnut16", "verse-paraphrase"])
def test_a_lora_run_completes_on_each_kind(name, wordpiece_bert_dir, tmp_path):
    cfg = _tiny_cfg(name, wordpiece_bert_dir, tmp_path, "method=lora")
    summary = experiment.run(cfg)
    assert summary["status"] == "success", summary
    record = json.loads(Path(summary["path"]).read_text())
    assert record["metrics"]["primary"]["name"] == cfg.task.primary_metric
    fractions = cfg.task.split.fractions  # verse-paraphrase v2 puts half in test
    assert record["data"]["n"] == {s: round(N_TINY * f) for s, f in fractions.items()}


def test_a_regression_run_completes(wordpiece_bert_dir, tmp_path):
    cfg = _compose(wordpiece_bert_dir, tmp_path, "method=lora", *_regression_overrides())
    summary = experiment.run(cfg)
    assert summary["status"] == "success", summary
    record = json.loads(Path(summary["path"]).read_text())
    assert record["metrics"]["primary"]["name"] == "pearson"


# -- readers ------------------------------------------------------------------------------------
def _src(**fields) -> OmegaConf:
    return OmegaConf.create(fields)


def test_conll_reader_reads_sentences_and_tags():
    tags = ["O", "B-person", "I-person", "B-movie", "I-movie", "B-company"]
    rows = READERS.get("conll_tags")(_src(path=str(DATA / "tiny_ner.txt"), label_values=tags))
    assert len(rows) == 30
    assert rows[0] == {"tokens": ["dull", "script", "funny", "bad", "lovely", "."],
                       "tags": [0, 5, 0, 0, 0, 0]}  # fmt: skip
    assert all(len(r["tokens"]) == len(r["tags"]) for r in rows)


def test_text_folders_reader_decodes_falls_back_and_drops_duplicates(tmp_path):
    for label, files in {"a": {"1": "x  y\n\nz", "2": "x y z"}, "b": {"1": "caf\xe9"}}.items():
        (tmp_path / label).mkdir()
        for stem, text in files.items():
            encoding = "cp1252" if label == "b" else "utf-8"
            (tmp_path / label / f"{stem}.txt").write_bytes(text.encode(encoding))
    source = _src(path=str(tmp_path), label_values=["a", "b"], fallback_encoding="cp1252")
    rows = READERS.get("text_folders")(source)
    assert rows == [{"text": "x y z", "label": 0}, {"text": "x y z", "label": 0},
                    {"text": "café", "label": 1}]  # fmt: skip
    source.drop_duplicates = True
    assert len(READERS.get("text_folders")(source)) == 2
    source.fallback_encoding = None
    with pytest.raises(DataError, match=r"b/1\.txt: line 1: .*not valid utf-8"):
        READERS.get("text_folders")(source)


def _bible_db(path: Path) -> Path:
    """Two versions, 2 books x 2 chapters x 3 verses, and a one-verse chapter; text names verse."""
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE bible (bbName, bNumber, cNumber, vNumber, vText)")
    con.execute("CREATE TABLE bibleRef (bbName, bNumber, bName, bsName)")
    for version, style in (("4", "web [{}] it`s"), ("k", "kjv {}")):
        for book in (1, 2):
            con.execute("INSERT INTO bibleRef VALUES (?, ?, ?, ?)", (version, book, f"B{book}", ""))
            for chapter in (1, 2):
                for verse in (1, 2, 3):
                    text = style.format(f"{book}.{chapter}.{verse}")
                    con.execute(
                        "INSERT INTO bible VALUES (?,?,?,?,?)",
                        (version, book, chapter, verse, text),
                    )
            con.execute(
                "INSERT INTO bible VALUES (?,?,?,?,?)", (version, book, 3, 1, style.format("x"))
            )
    con.commit()
    con.close()
    return path


def test_verse_pairs_are_balanced_same_chapter_pairs(tmp_path):
    source = _src(path=str(_bible_db(tmp_path / "b.db")), versions=["4", "k"],
                  verses_per_chapter=2, salt="s")  # fmt: skip
    rows = READERS.get("verse_pairs")(source)
    assert len(rows) == 2 * 2 * 2 * 2  # books x chapters x anchors x (positive, negative)
    assert Counter(r["label"] for r in rows) == {0: 8, 1: 8}
    for row in rows:
        anchor = row["sentence1"].removeprefix("web ").removesuffix(" it's")
        partner = row["sentence2"].removeprefix("kjv ")
        assert "[" not in row["sentence1"] and row["book"] == f"B{anchor[0]}"
        assert anchor[:3] == partner[:3]  # same book and chapter
        assert (anchor == partner) == (row["label"] == 1)
    assert rows == READERS.get("verse_pairs")(source)  # deterministic


def test_grouped_split_keeps_groups_whole_and_is_deterministic():
    rows = [{"group": f"g{i % 20}", "i": i} for i in range(200)]
    fractions = {"train": 0.8, "dev": 0.1, "test": 0.1}
    splits = grouped_split(rows, fractions=fractions, salt="s", group_key="group")
    groups = {name: {r["group"] for r in part} for name, part in splits.items()}
    assert not (groups["train"] & groups["dev"] or groups["train"] & groups["test"])
    assert not groups["dev"] & groups["test"]
    assert {name: len(part) for name, part in splits.items()} == {
        "train": 160,
        "dev": 20,
        "test": 20,
    }
    assert splits == grouped_split(
        rows[::-1][::-1], fractions=fractions, salt="s", group_key="group"
    )
    assert splits != grouped_split(rows, fractions=fractions, salt="t", group_key="group")


ROWS = [{"a": "good film", "y": "pos"}, {"a": "bad film", "y": "neg"}]
TABLE = {"text_columns": ["a"], "label_column": "y", "label_values": ["neg", "pos"]}


def _write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_table_reader_reads_every_format_alike(suffix, tmp_path):
    path = _write(tmp_path / f"d{suffix}", ROWS)
    rows = READERS.get("table")(_src(path=str(path), **TABLE))
    assert rows == [{"a": "good film", "label": 1}, {"a": "bad film", "label": 0}]


def test_table_reader_takes_one_file_per_split(tmp_path):
    files = {
        name: str(_write(tmp_path / f"{name}.csv", ROWS))
        for name in ("train", "validation", "test")
    }
    data = READERS.get("table")(_src(files=files, **TABLE))
    assert set(data) == {"train", "dev", "test"} and all(len(v) == 2 for v in data.values())


def test_hf_disk_reader_keeps_the_splits_of_a_dataset_dict(tmp_path):
    import datasets

    part = datasets.Dataset.from_list(ROWS * 3)
    datasets.DatasetDict({"train": part, "validation": part, "test": part}).save_to_disk(
        tmp_path / "dd"
    )
    data = READERS.get("hf_disk")(_src(path=str(tmp_path / "dd"), **TABLE))
    assert {k: len(v) for k, v in data.items()} == {"train": 6, "dev": 6, "test": 6}
    assert data["dev"][0] == {"a": "good film", "label": 1}
    part.save_to_disk(tmp_path / "one")
    assert len(READERS.get("hf_disk")(_src(path=str(tmp_path / "one"), **TABLE))) == 6


def test_a_local_jsonl_token_task_reads_tags(tmp_path):
    path = tmp_path / "ner.jsonl"
    path.write_text(json.dumps({"tokens": ["new", "york"], "ner": ["B-loc", "I-loc"]}) + "\n")
    source = _src(
        path=str(path), label_type="tags", label_column="ner", label_values=["O", "B-loc", "I-loc"]
    )
    assert READERS.get("table")(source) == [{"tokens": ["new", "york"], "tags": [1, 2]}]


# -- bad input: one line naming the file, the row and the fix -----------------------------------
#: case -> (file content, or None for no file; the error it must raise)
BAD = {
    "missing file": (None, r"nope\.csv: no such data file; fix"),
    "wrong column": (b"text,y\ngood,pos\n", r"nope\.csv: row 1: no column 'a' .*; fix"),
    "unknown label": (b"a,y\ngood,pos\nbad,meh\n", r"row 2: label 'meh' is not one of .*; fix"),
    "non-utf-8": (
        b"a,y\ngood,pos\ncaf\xe9,neg\n",
        r"line 3: byte b'\\xe9' is not valid utf-8; re-save",
    ),
    "empty file": (b"a,y\n", r"nope\.csv: no rows"),
    "short row": (b"a,y\ngood\n", r"nope\.csv: row 1: no value for 'y'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_table_input_raises_a_one_line_data_error(case, tmp_path):
    content, pattern = BAD[case]
    path = tmp_path / "nope.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=pattern) as error:
        READERS.get("table")(_src(path=str(path), **TABLE))
    assert "\n" not in str(error.value)


def test_an_ner_line_without_a_tag_is_named(tmp_path):
    path = tmp_path / "ner.txt"
    path.write_text("the\tO\nfilm\n\n")
    with pytest.raises(
        DataError, match=r"ner\.txt: line 2: 'film' has no tag; write `token<TAB>tag`"
    ):
        READERS.get("conll_tags")(_src(path=str(path), label_values=["O"]))


def test_an_empty_split_is_named_before_training(wordpiece_bert_dir, tmp_path):
    cfg = _tiny_cfg("polarity", wordpiece_bert_dir, tmp_path)
    with open_dict(cfg):
        cfg.task.split.fractions = {"train": 0.9, "dev": 0.1, "test": 0.0}
    with pytest.raises(DataError, match=r"polarity\.jsonl: the test split is empty; add data"):
        _ = build_task(cfg.task).splits


# -- the real offline tasks (slow) --------------------------------------------------------------
REAL = {
    # name: (rows per split, labels seen)
    "hedge": ({"train": 2400, "dev": 300, "test": 300}, {0, 1}),
    "bbc-news": ({"train": 1699, "dev": 212, "test": 214}, {0, 1, 2, 3, 4}),
    "verse-paraphrase": ({"train": 3800, "dev": 968, "test": 4732}, {0, 1}),  # versions 2-3
    "wnut16": ({"train": 1915, "dev": 239, "test": 240}, set(range(21))),
}


def _real_cfg(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"task={name}", *overrides])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_task_data_has_the_documented_sizes_and_labels(name):
    sizes, labels = REAL[name]
    task = build_task(_real_cfg(name).task)
    assert {split: len(rows) for split, rows in task.splits.items()} == sizes
    key = "tags" if task.kind == "token_classification" else "label"
    for rows in task.splits.values():
        seen = {t for r in rows for t in (r[key] if key == "tags" else [r[key]])}
        assert seen <= labels
    seen_train = {t for r in task.splits["train"] for t in (r[key] if key == "tags" else [r[key]])}
    assert seen_train == labels


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_task_trains_a_few_lora_steps_on_minilm(name, tmp_path):
    cfg = _real_cfg(
        name,
        "method=lora",
        f"results_dir={tmp_path}",
        "tracker=none",
        "train.max_steps=3",
        "train.eval_every_steps=3",
        "train.batch_size=8",
        "train.warmup_steps_excluded=1",
        "task.max_length=32",  # evaluating dev and test dominates; short inputs keep it quick
        "data_cache=false",
    )
    summary = experiment.run(cfg)
    assert summary["status"] == "success", summary
    record = json.loads(Path(summary["path"]).read_text())
    assert record["data"]["n"] == REAL[name][0]
    assert record["params"]["head_modules"] == ["classifier"]
    value = record["metrics"]["test"][cfg.task.primary_metric]
    assert METRICS[cfg.task.primary_metric].worst <= value <= METRICS[cfg.task.primary_metric].best
