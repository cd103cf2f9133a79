"""Shared fixtures: a tiny BERT built from config, a tiny corpus, and composed configs.

Fast tests never touch the network or the real assets; tests marked ``slow`` use the assets.
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ["WANDB_MODE"] = "disabled"  # a test that wants wandb sets its own mode
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core (pyproject's addopts): each worker, and the runs
    # it starts in subprocesses, gets one thread, since workers that each spread torch over
    # every core oversubscribe a 2-core machine several times over.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(__file__).resolve().parent / "assets"
FIXTURE_RECORDS = Path(__file__).resolve().parent / "fixtures" / "records"
METHOD_YAMLS = sorted((ROOT / "conf" / "method").glob("*.yaml"))


def save_tiny_bert(folder: Path, vocab: Path, *, max_positions: int = 64) -> Path:
    """Saves a 2-layer BERT (hidden 32) with random weights and the given vocabulary."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    tokenizer = BertTokenizer(vocab=str(vocab))  # transformers 5 ignores `vocab_file=`
    tokenizer.save_pretrained(folder)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=max_positions,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _unpinned_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's commands pin the source afresh (peftbench.runner.pinned_source): a pin one
    test's in-process command left in os.environ must not hold the next test's runs."""
    monkeypatch.delenv("PEFTBENCH_SOURCE_DIGEST", raising=False)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT with a 31-word vocabulary (tests/assets/tiny_vocab.txt)."""
    folder = save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), ASSETS / "tiny_vocab.txt")
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(folder).tokenize("the film is good") == [
        "the",
        "film",
        "is",
        "good",
    ]
    return folder


@dataclass(frozen=True)
class BuiltReport:
    out: Path  # the report folder
    written: list[Path]  # what build_report returned


@pytest.fixture(scope="session")
def fixture_report(tmp_path_factory: pytest.TempPathFactory) -> BuiltReport:
    """The report of a copy of tests/fixtures/records, built once for every test that only
    reads it (a build draws 12 figures: ~7 s). A test that changes records builds its own."""
    from analysis.frame import RecordWarning
    from analysis.report import build_report

    results = Path(shutil.copytree(FIXTURE_RECORDS, tmp_path_factory.mktemp("report") / "results"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordWarning)  # the fixtures hold damaged records
        written = build_report(results)
    return BuiltReport(results / "report", written)


def tiny_overrides(model_dir: Path, results_dir: Path, *extra: str) -> list[str]:
    """Config overrides that point a run at the tiny model and corpus, with a short schedule."""
    return [
        "model.name=tiny-bert",
        "model.source.asset=null",
        f"model.source.path={model_dir}",
        "task.source.asset=null",
        f"task.source.path={ASSETS / 'tiny_polarity.csv'}",
        # the fixture's 80 rows are sized for 80/10/10 (polarity v2 itself puts half in test)
        "task.split.fractions={train:0.8,dev:0.1,test:0.1}",
        f"results_dir={results_dir}",
        "tracker=none",
        "train.max_steps=4",
        "train.eval_every_steps=2",
        "train.log_every_steps=1",
        "data_cache=false",
        "train.batch_size=8",
        "train.warmup_steps_excluded=1",
        "device=cpu",
        # Merged/unmerged inference latency is measured only by the tests about it.
        "instrument.inference=false",
        *extra,
    ]


@pytest.fixture
def compose(tiny_bert_dir: Path, tmp_path: Path):
    """Returns ``compose(*overrides)``: the project's config, pointed at tiny things."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    def _compose(*extra: str, results_dir: Path | None = None):
        overrides = tiny_overrides(tiny_bert_dir, results_dir or tmp_path / "results", *extra)
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return hydra_compose("config", overrides=overrides)

    return _compose
