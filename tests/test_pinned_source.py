"""A command's runs run the source it started with, or none (peftbench.runner.pinned_source).

The offline benchmark v2 lost two records to a sweep whose later jobs composed their config
from conf/ files changed under it while their code was the old one: these tests fail on the
code before the pin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from peftbench.launch import exit_codes
from peftbench.records.store import records_dir
from peftbench.runner import pinned_source
from tests.conftest import ROOT, tiny_overrides


@pytest.fixture
def source(tmp_path, monkeypatch):
    """A source tree of two folders, pinned: what pinned_source fingerprints in the test."""
    code, conf = tmp_path / "peftbench", tmp_path / "conf"
    (code / "__pycache__").mkdir(parents=True)
    (conf / "method").mkdir(parents=True)
    (code / "train.py").write_text("STEPS = 10\n")
    (conf / "method" / "lora.yaml").write_text("lr: 5e-4\n")
    monkeypatch.setattr(pinned_source, "ROOTS", (code, conf))
    monkeypatch.setattr(pinned_source, "_refused", [])
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))  # where the pin's list waits
    pinned_source.pin()
    return code, conf


def test_a_changed_conf_file_stops_the_next_run_and_names_the_file(source, caplog):
    code, conf = source
    caplog.set_level("INFO", logger="peftbench")
    assert pinned_source.moved() is None and pinned_source.holds("run-a")
    (conf / "method" / "lora.yaml").write_text("lr: 1e-3\n")
    why = pinned_source.moved()
    assert why is not None and "(conf/method/lora.yaml)" in why
    assert why.endswith("Run the same command again to go on with the new version")
    assert not pinned_source.holds("run-b") and not pinned_source.holds("run-c")
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said == [
        ("ERROR", f"run-b: not started: {why}"),  # in full once, then one short line a run
        ("INFO", "run-c: not started: the source changed (said above)"),
    ]


def test_the_pin_holds_contents_not_timestamps_and_ignores_what_is_not_source(source):
    code, conf = source
    (code / "train.py").write_text("STEPS = 10\n")  # rewritten, same bytes: a checkout back
    (code / "__pycache__" / "train.cpython-312.pyc").write_bytes(b"\0")
    (conf / "README.md").write_text("notes\n")
    assert pinned_source.moved() is None
    (code / "new_method.py").write_text("")  # a file added is a change too
    assert "(peftbench/new_method.py)" in pinned_source.moved()


def test_a_pin_from_the_launching_command_is_kept_and_compared(source, monkeypatch):
    """Lanes and scheduler jobs inherit the launching command's pin: their own call to pin()
    keeps it, so a change between the launch and their start is caught too. Pinned on a
    machine whose cache they cannot read, they give the digests instead of the files."""
    monkeypatch.setenv(pinned_source.ENV, "0123456789abcdef")
    assert pinned_source.pin() == "0123456789abcdef"
    now = pinned_source.digest(pinned_source.fingerprint())
    assert f"(source digest 0123456789abcdef -> {now})" in pinned_source.moved()


def test_a_sweep_under_a_moved_source_starts_nothing_records_nothing_and_exits_3(
    tiny_bert_dir, tmp_path
):
    results = tmp_path / "results"
    env = {**os.environ, "WANDB_MODE": "disabled", pinned_source.ENV: "0123456789abcdef"}
    done = subprocess.run(
        [sys.executable, "run.py", "-m", "seed=0,1", *tiny_overrides(tiny_bert_dir, results)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == exit_codes.EXIT_NOT_STARTED, done.stderr[-3000:]
    assert not records_dir(results).exists() or not list(records_dir(results).iterdir())
    [line] = [ln for ln in done.stderr.splitlines() if ln.startswith("peftbench:")]
    assert line.startswith("peftbench: source changed: 2 run(s) not started, as peftbench's code")
    log = done.stderr + done.stdout
    assert "not started: peftbench's code or configuration changed" in log  # the reason, once
    assert log.count("(said above)") == 1  # then the short form for the second job


def test_a_record_names_the_source_it_ran(tiny_bert_dir, tmp_path):
    results = tmp_path / "results"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    done = subprocess.run(
        [sys.executable, "run.py", "seed=0", *tiny_overrides(tiny_bert_dir, results)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    [path] = records_dir(results).glob("*.json")
    code = json.loads(path.read_text())["code"]
    assert code["source_digest"] == pinned_source.digest(pinned_source.fingerprint())


@pytest.mark.parametrize("lanes", [1, 2])
def test_a_pipeline_pins_before_its_sweeps_start(lanes, monkeypatch, tmp_path):
    """tune and the benchmark stages launch ``peftbench run -m`` children: every child gets
    the pipeline's one pin, however many sweeps and lanes follow."""
    from types import SimpleNamespace

    from peftbench.launch import commands

    seen = []

    def started(argv, env=None):
        seen.append((env or os.environ).get(pinned_source.ENV))
        return SimpleNamespace(returncode=0)

    monkeypatch.setattr(commands.subprocess, "run", started)
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path))
    assert commands.call_all([["seed=0"], ["seed=1"]], tag="t", lanes=lanes) == 0
    assert len(seen) == 2 * lanes and set(seen) == {pinned_source.current()} != {None}
