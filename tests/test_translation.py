"""Translation contract: preprocessing, collation, generation and metrics per model family.

Three tiny models built from config stand for the three ways a translation model is loaded:
a T5 from a local folder (the Hub path: ``AutoModelForSeq2SeqLM.from_pretrained``), a Llama
(decoder-only: prompt + target) and a BERT->BERT encoder-decoder warm-started like
``minilm2minilm``. The data is a tiny ``bible.db`` read by the real reader. The ``slow``
tests load the real Bible tasks and train a few steps of the real MiniLM->MiniLM.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from peftbench.models.backbones import WARM_START_HEADS, load_backbone
from peftbench.runner import experiment
from peftbench.runner.assembly import assemble
from tasks import build_task
from tasks.metrics import METRICS
from tasks.translation import IGNORE_INDEX
from tests.conftest import ROOT, save_tiny_bert

WORDS = ["the", "good", "great", "fine", "lovely", "bad", "film", "story", "is", "was", "a"]
SOURCE_WORDS = ["der", "gute", "tolle", "feine", "schlechte", "film", "ist", "war", "ein"]
SPECIALS = ["<pad>", "</s>", "<unk>", "<s>"]
PROMPT_WORDS = ["Translate", "German", "to", "English", ".", ":"]  # the task's prompt
BOOKS = 6  # grouped 80/10/10 by book: 4 train, 1 dev, 1 test
FAMILIES = ("t5", "llama", "warm_start")


# -- tiny data and models ---------------------------------------------------------------------
def _verse(words: list[str], book: int, chapter: int, verse: int) -> str:
    return " ".join(words[(book * 5 + chapter * 3 + verse * 2 + j) % len(words)] for j in range(5))


def bible_db(path: Path) -> Path:
    """Versions "e" (source) and "4" (target): 6 books x 2 chapters x 5 verses, some " -"."""
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE bible (bbName, bNumber, cNumber, vNumber, vText)")
    con.execute("CREATE TABLE bibleRef (bbName, bNumber, bName, bsName)")
    for book in range(1, BOOKS + 1):
        con.execute("INSERT INTO bibleRef VALUES ('4', ?, ?, '')", (book, f"Book{book}"))
        for chapter in (1, 2):
            for verse in range(1, 6):
                src = _verse(SOURCE_WORDS, book, chapter, verse) + (" -" if verse == 2 else "")
                tgt = _verse(WORDS, book, chapter, verse)
                for version, text in (("e", src), ("4", tgt)):
                    con.execute(
                        "INSERT INTO bible VALUES (?,?,?,?,?)",
                        (version, book, chapter, verse, text),
                    )
    con.commit()
    con.close()
    return path


def _word_tokenizer(folder: Path, template: str, words: list[str] | None = None):
    """A word-level fast tokenizer over the fixture's words (or ``words``); ``template`` adds
    the specials to one text, and to each text of a pair."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = words or sorted(set(WORDS + SOURCE_WORDS)) + PROMPT_WORDS
    vocab = {w: i for i, w in enumerate(dict.fromkeys(SPECIALS + words))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = [(t, vocab[t]) for t in ("<s>", "</s>")]
    pair = f"{template} {template.replace('$A', '$B')}"
    core.post_processor = processors.TemplateProcessing(
        single=template, pair=pair, special_tokens=specials
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        bos_token="<s>",
    )  # fmt: skip
    tokenizer.save_pretrained(folder)
    return tokenizer


def save_tiny_t5(folder: Path, words: list[str] | None = None) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = _word_tokenizer(folder, "$A </s>", words)  # T5: no start token, eos at the end
    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
        num_decoder_layers=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    return folder


def save_tiny_llama(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _word_tokenizer(folder, "<s> $A")  # Llama: a start token, no eos
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=3,
        eos_token_id=1, max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _save_tiny_bert_for_words(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    words = sorted(set(WORDS + SOURCE_WORDS))
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *words]) + "\n")
    return save_tiny_bert(folder, vocab, max_positions=128)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("translation-models")
    return {
        "t5": save_tiny_t5(root / "t5"),
        "llama": save_tiny_llama(root / "llama"),
        "warm_start": _save_tiny_bert_for_words(root / "bert"),
    }


@pytest.fixture(scope="session")
def tiny_db(tmp_path_factory) -> Path:
    return bible_db(tmp_path_factory.mktemp("bible") / "bible.db")


def _model_overrides(family: str, folder: Path) -> list[str]:
    common = ["model=minilm2minilm", "model.source.asset=null", f"model.source.path={folder}"]
    if family == "warm_start":
        return [*common, "model.name=tiny-bert2bert"]
    kind = "decoder" if family == "llama" else "encoder_decoder"
    return [*common, f"model.name=tiny-{family}", "model.warm_start=null", f"model.family={kind}"]


def tiny_cfg(family: str, models: dict, db: Path, results: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "task=bible-de-en",
                *_model_overrides(family, models[family]),
                "task.source.asset=null",
                f"task.source.path={db}",
                "task.max_examples={train: 30, dev: 8, test: 8}",
                "task.max_length=8",
                "task.max_target_length=8",
                "task.generation.max_new_tokens=6",
                f"results_dir={results}",
                "tracker=none",
                "device=cpu",
                "data_cache=false",
                "train.max_steps=2",
                "train.eval_every_steps=2",
                "train.batch_size=8",
                "train.warmup_steps_excluded=1",
                "instrument.inference=false",  # measured by tests/test_experiment.py only
                *overrides,
            ],
        )
    return cfg


def _setup(family, models, db, tmp_path):
    cfg = tiny_cfg(family, models, db, tmp_path / "results")
    task = build_task(cfg.task)
    return cfg, task, load_backbone(cfg.model, task)


# -- data ---------------------------------------------------------------------------------------
def test_the_reader_aligns_verses_strips_the_hyphen_and_splits_by_book(
    tiny_models, tiny_db, tmp_path
):
    cfg = tiny_cfg("t5", tiny_models, tiny_db, tmp_path)
    with open_dict(cfg):
        cfg.task.max_examples = None
    task = build_task(cfg.task)
    sizes = {name: len(rows) for name, rows in task.splits.items()}
    assert sizes == {"train": 40, "dev": 10, "test": 10}
    books = {name: {r["book"] for r in rows} for name, rows in task.splits.items()}
    assert sum(len(b) for b in books.values()) == BOOKS  # every book in exactly one split
    rows = [r for split in task.splits.values() for r in split]
    assert not any(r["source"].endswith("-") for r in rows)
    assert {r["source"].split()[0] for r in rows} <= set(SOURCE_WORDS)


def test_max_examples_subsamples_each_split_deterministically(tiny_models, tiny_db, tmp_path):
    task = build_task(tiny_cfg("t5", tiny_models, tiny_db, tmp_path).task)
    assert {n: len(r) for n, r in task.splits.items()} == {"train": 30, "dev": 8, "test": 8}
    again = build_task(tiny_cfg("t5", tiny_models, tiny_db, tmp_path).task)
    assert again.splits == task.splits and again.fingerprint == task.fingerprint


# -- the contract per family ----------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_translation_contract(family, tiny_models, tiny_db, tmp_path):
    cfg, task, backbone = _setup(family, tiny_models, tiny_db, tmp_path)
    tokenizer = backbone.tokenizer
    assert task.peft_task_type == ("CAUSAL_LM" if family == "llama" else "SEQ_2_SEQ_LM")
    rows = task.splits["train"][:4]
    features = task.encode(rows, tokenizer)
    for feature in features:
        labels = feature["labels"]
        target = [t for t in labels if t != IGNORE_INDEX]
        assert target[-1] == (tokenizer.sep_token_id if family == "warm_start" else 1)  # eos
        if family == "llama":  # the prompt is masked, the target follows it
            n_prompt = labels.index(target[0])
            assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
            assert feature["input_ids"][n_prompt:] == target
            prompt = tokenizer.decode(feature["input_ids"][:n_prompt])
            assert prompt.replace(" ", "").endswith("English:")  # word-level decode adds spaces
        else:  # the decoder's start token is the model's to add, not a label
            assert IGNORE_INDEX not in labels and labels[0] != tokenizer.cls_token_id
    batch = task.collate(features, tokenizer)
    width = max(len(f["input_ids"]) for f in features)
    assert batch["input_ids"].shape == (4, width)
    assert (batch["labels"][:, -1] != IGNORE_INDEX).sum() >= 1
    pad = batch["attention_mask"] == 0
    assert (batch["input_ids"][pad] == tokenizer.pad_token_id).all()
    assert backbone.model(**batch).loss.isfinite()
    backbone.model.eval()
    with torch.no_grad():
        preds = task.predict_batch(backbone.model, batch)
    refs = task.references(batch)
    assert len(preds) == 4 and all(isinstance(p, str) for p in preds)
    assert refs == [r["target"][: len(refs[i])] for i, r in enumerate(rows)]  # round-trip text
    _check_metrics(task, refs)


def _check_metrics(task, refs: list[str]) -> None:
    """Perfect predictions score best on every metric; wrong words the primary's worst."""
    for name, value in task.compute_metrics(refs, refs).items():
        assert value == pytest.approx(METRICS[name].best), name
    wrong = ["zzz qqq xxx" for _ in refs]
    primary = task.compute_metrics(wrong, refs)[task.primary_metric]
    assert primary == pytest.approx(METRICS[task.primary_metric].worst)


def test_causal_generation_continues_the_prompt_alone_left_padded(tiny_models, tiny_db, tmp_path):
    cfg, task, backbone = _setup("llama", tiny_models, tiny_db, tmp_path)
    features = task.encode(task.splits["train"][:3], backbone.tokenizer)
    backbone.tokenizer.padding_side = "left"  # the labels follow the inputs' padding side
    batch = task.collate(features, backbone.tokenizer)
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    prompts = task._prompts(batch)
    masked = [f["labels"].count(IGNORE_INDEX) for f in features]
    assert [len(p) for p in prompts] == masked
    calls, answer = {}, torch.tensor([[5, 6, 1]])

    def generate(input_ids, attention_mask, **kwargs):
        calls.update(ids=input_ids, mask=attention_mask, **kwargs)
        return torch.cat([input_ids, answer.expand(len(input_ids), -1)], dim=1)

    def batch_decode(ids, **kwargs):
        calls["decoded"] = ids
        return ["good film\nder"] * len(ids)  # a model that runs on past its answer

    backbone.model.generate, task.tokenizer.batch_decode = generate, batch_decode
    assert task.predict_batch(backbone.model, batch) == ["good film"] * 3  # first line only
    assert calls["decoded"].tolist() == answer.expand(3, -1).tolist()  # the prompt cut off
    assert (calls["mask"][:, -1] == 1).all() and calls["ids"].shape[1] == max(masked)
    assert calls["num_beams"] == 1 and calls["do_sample"] is False


def test_the_hub_path_loads_a_seq2seq_model_with_from_pretrained(tiny_models, tiny_db, tmp_path):
    _, task, backbone = _setup("t5", tiny_models, tiny_db, tmp_path)
    assert type(backbone.model).__name__ == "T5ForConditionalGeneration"
    assert backbone.head_modules == []


def test_the_warm_start_trains_exactly_what_is_new(tiny_models, tiny_db, tmp_path):
    from safetensors.torch import load_file

    _, _, backbone = _setup("warm_start", tiny_models, tiny_db, tmp_path)
    model = backbone.model
    assert type(model).__name__ == "EncoderDecoderModel"
    cls, sep = backbone.tokenizer.cls_token_id, backbone.tokenizer.sep_token_id
    for config in (model.config, model.generation_config):
        assert (config.decoder_start_token_id, config.eos_token_id) == (cls, sep)
        assert config.pad_token_id == backbone.tokenizer.pad_token_id
    pretrained = set(load_file(str(tiny_models["warm_start"] / "model.safetensors")))
    new = {
        name.removeprefix("decoder.").removeprefix("bert.")
        for name, _ in model.named_parameters()
        if name.startswith("decoder.")
    } - pretrained
    heads = set(WARM_START_HEADS)
    untrained = {n for n in new if not heads & set(n.split("."))}
    assert untrained == {"cls.predictions.bias"}  # zero, beside the tied embeddings


# -- methods on each family ----------------------------------------------------------------
METHODS = {"t5": ["lora", "prefix", "adapter"], "llama": ["lora", "prefix", "adapter"],
           "warm_start": ["lora", "adapter"]}  # fmt: skip


@pytest.mark.parametrize(
    ("family", "method"), [(f, m) for f in FAMILIES for m in METHODS[f]], ids=str
)
def test_a_method_trains_and_generates(family, method, tiny_models, tiny_db, tmp_path):
    cfg = tiny_cfg(family, tiny_models, tiny_db, tmp_path, f"method={method}")
    task = build_task(cfg.task)
    loaded, adapted = assemble(cfg, task, torch.device("cpu"))
    backbone, model = loaded.backbone, adapted.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if family == "warm_start":  # the new cross-attention trains, LoRA stays out of it
        assert any("crossattention" in n for n in trainable)
        assert not any("crossattention" in n and "lora_" in n for n in trainable)
    tokenizer = backbone.tokenizer
    batch = task.collate(task.encode(task.splits["train"][:4], tokenizer), tokenizer)
    model(**batch).loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        assert len(task.predict_batch(model, batch)) == 4


@pytest.mark.parametrize("family", FAMILIES)
def test_a_lora_translation_run_completes(family, tiny_models, tiny_db, tmp_path):
    cfg = tiny_cfg(family, tiny_models, tiny_db, tmp_path, "method=lora", "task.max_length=4")
    summary = experiment.run(cfg)
    assert summary["status"] == "success", summary
    record = json.loads(Path(summary["path"]).read_text())
    assert record["metrics"]["primary"]["name"] == "bleu"
    assert set(record["metrics"]["test"]) == {"bleu", "chrf"}
    assert record["data"]["n"] == {"train": 30, "dev": 8, "test": 8}
    assert record["data"]["n_truncated"]["train"] == 30  # every 5-word source hits 4 tokens
    if family == "warm_start":
        assert record["params"]["head"] > 0


# -- the real Bible tasks (slow) -----------------------------------------------------------
#: name -> rows per split before ``max_examples`` (whole books per split; Psalms alone is 2,461).
REAL_SIZES = {
    "bible-de-en": {"train": 24435, "dev": 3556, "test": 3111},
    "bible-fr-en": {"train": 23904, "dev": 3479, "test": 3719},
    "bible-ro-en": {"train": 23456, "dev": 3799, "test": 3847},
}


def _real_cfg(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"task={name}", "model=minilm2minilm", *overrides])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REAL_SIZES))
def test_real_bible_task_splits_by_book(name):
    cfg = _real_cfg(name)
    with open_dict(cfg):
        cfg.task.max_examples = None
    task = build_task(cfg.task)
    sizes = {split: len(rows) for split, rows in task.splits.items()}
    assert sum(sizes.values()) == 31102 and sizes == REAL_SIZES[name]
    books = [{r["book"] for r in rows} for rows in task.splits.values()]
    assert sum(len(b) for b in books) == len(set().union(*books)) == 66
    rows = [r for split in task.splits.values() for r in split]
    assert not any(r["source"].endswith(" -") for r in rows)
    capped = build_task(_real_cfg(name).task).splits
    assert {s: len(r) for s, r in capped.items()} == {"train": 10000, "dev": 200, "test": 500}


@pytest.mark.slow
def test_real_minilm2minilm_trains_a_few_steps(tmp_path):
    cfg = _real_cfg(
        "bible-de-en",
        "method=lora",
        f"results_dir={tmp_path}",
        "tracker=none",
        "data_cache=false",
        "train.max_steps=2",
        "train.eval_every_steps=2",
        "train.batch_size=4",
        "train.eval_batch_size=16",
        "train.warmup_steps_excluded=1",
        "task.max_examples={train: 64, dev: 8, test: 8}",
        "task.max_length=32",
        "task.max_target_length=32",
        "task.generation.max_new_tokens=8",
        "instrument.inference=false",
    )
    summary = experiment.run(cfg)
    assert summary["status"] == "success", summary
    record = json.loads(Path(summary["path"]).read_text())
    assert record["params"]["head_modules"] == WARM_START_HEADS
    assert 0 <= record["metrics"]["test"]["chrf"] <= 100
