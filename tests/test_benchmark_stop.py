"""`peftbench benchmark stop`: a chunk ends now, its runs checkpointed, no other process hit."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from peftbench.cli import main
from peftbench.launch.stop import held, live_claims, stop_flow
from tests.conftest import tiny_overrides
from tests.test_interrupt import LONG, past_step_3

pytestmark = pytest.mark.faults

#: Holds a lock as claim_run does (flock, then "host pid N"), naming the host and pid given.
_HOLDER = """
import fcntl, pathlib, sys, time
lock = open(sys.argv[1], "a+")
fcntl.flock(lock, fcntl.LOCK_EX)
lock.truncate(0); lock.write(sys.argv[2]); lock.flush()
pathlib.Path(sys.argv[3]).touch()
time.sleep(60)
"""


def _hold(lock, content, tmp_path):
    """A process holding ``lock`` with ``content``; returns once it holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    ready = tmp_path / f"{lock.stem}.ready"
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock), content, str(ready)])
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    return proc


def test_a_stop_interrupts_the_run_under_way_at_its_step_with_a_checkpoint(
    tiny_bert_dir, tmp_path, capsys
):
    bench = tmp_path / "bench"
    run = past_step_3(tiny_overrides(tiny_bert_dir, bench / "grid", *LONG), tmp_path / "step3")

    assert stop_flow(bench, timeout_s=120) == 0
    run.communicate(timeout=60)
    assert run.returncode == 128 + signal.SIGTERM
    assert (bench / "DRAIN").exists()  # no lane starts another run
    (record,) = [json.loads(p.read_text()) for p in (bench / "grid" / "records").glob("*.json")]
    assert record["status"] == "interrupted" and record["error_step"] >= 3
    assert (bench / "grid" / "checkpoints" / f"{record['run_id']}.safetensors").exists()
    assert f"{record['run_id']}: SIGTERM to pid {run.pid}" in capsys.readouterr().out
    assert live_claims(bench) == []


def test_a_lock_no_process_holds_is_no_run_and_the_pid_it_names_is_left_alone(tmp_path):
    bystander = subprocess.Popen(["sleep", "60"])  # the pid a stale lock names
    try:
        lock = tmp_path / "bench" / "final" / "locks" / "polarity--tiny--lora--s0--abcd1234.lock"
        lock.parent.mkdir(parents=True)
        lock.write_text(f"{socket.gethostname()} pid {bystander.pid}")  # left by a dead run
        assert not held(lock) and live_claims(tmp_path / "bench") == []
        assert stop_flow(tmp_path / "bench", timeout_s=5) == 0
        time.sleep(0.2)
        assert bystander.poll() is None  # not signalled
    finally:
        bystander.kill()


def test_a_run_held_on_another_host_is_named_not_signalled(tmp_path, capsys):
    bystander = subprocess.Popen(["sleep", "60"])  # shares the pid the other host's lock names
    lock = tmp_path / "bench" / "grid" / "locks" / "hedge--tiny--lora--s100--abcd1234.lock"
    holder = _hold(lock, f"node-7 pid {bystander.pid}", tmp_path)
    try:
        (claim,) = live_claims(tmp_path / "bench")
        assert (claim.host, claim.pid, claim.run_id) == ("node-7", bystander.pid, lock.stem)
        assert stop_flow(tmp_path / "bench", timeout_s=1, poll_s=0.1) == 1
        assert bystander.poll() is None and holder.poll() is None
        assert f"{lock.stem}: runs on host node-7" in capsys.readouterr().out
    finally:
        bystander.kill()
        holder.kill()


def test_a_run_that_does_not_stop_in_time_is_reported_still_running(tmp_path, capsys):
    deaf = subprocess.Popen(  # SIGTERM ignored (inherited through exec)
        ["sleep", "60"], preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN)
    )
    lock = tmp_path / "bench" / "grid" / "locks" / "wnut16--tiny--lora--s100--abcd1234.lock"
    holder = _hold(lock, f"{socket.gethostname()} pid {deaf.pid}", tmp_path)
    try:
        assert stop_flow(tmp_path / "bench", timeout_s=0.5, poll_s=0.1) == 1
        out = capsys.readouterr().out
        assert f"{lock.stem}: SIGTERM to pid {deaf.pid}" in out
        assert f"{lock.stem}: still running after 0.5 s (pid {deaf.pid})" in out
        assert deaf.poll() is None and held(lock)
    finally:
        deaf.kill()
        holder.kill()


def test_stop_on_a_missing_folder_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["benchmark", "stop", "--results", str(tmp_path / "nope")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "--results" in line and "nope" in line
