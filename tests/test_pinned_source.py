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
    monkeypatch.setattr(pinned_source, "_pinned", {})
    monkeypatch.setattr(pinned_source, "_said", [])
    pinned_source.pin()
    return code, conf


def test_a_changed_conf_file_stops_the_next_run_and_names_the_file(source):
    code, conf = source
    assert pinned_source.moved() is None
    (conf / "method" / "lora.yaml").write_text("lr: 1e-3\n")
    why = pinned_source.moved()
    assert why is not None and "(conf/method/lora.yaml)" in why
    assert why.endswith("Run the same command again to go on with the new version")
    assert pinned_source.moved() == "the source changed since this command started (said above)"


def test_the_pin_holds_contents_not_timestamps_and_ignores_what_is_not_source(source):
    code, conf = source
    (code / "train.py").write_text("STEPS = 10\n")  # rewritten, same bytes: a checkout back
    (code / "__pycache__" / "train.cpython-312.pyc").write_bytes(b"\0")
    (conf / "README.md").write_text("notes\n")
    assert pinned_source.moved() is None
    (code / "new_method.py").write_text("")  # a file added is a change too
    assert "peftbench/new_method.py" in pinned_source.moved()


def test_a_pin_from_the_launching_command_is_kept_and_compared(source, monkeypatch):
    """Lanes and scheduler jobs inherit the launching command's pin: their own call to pin()
    keeps it, so a change between the launch and their start is caught too."""
    monkeypatch.setenv(pinned_source.ENV, "0123456789abcdef")
    monkeypatch.setattr(pinned_source, "_pinned", {})  # a child process: it did not pin
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
