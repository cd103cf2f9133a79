"""A signal ends a run with an `interrupted` record and a checkpoint; the next run resumes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from peftbench.records.store import records_dir
from tests.conftest import ROOT, tiny_overrides

pytestmark = pytest.mark.faults

#: run.py, slowed to 50 ms a step, touching a marker file once step 3 is done.
_DRIVER = """
import pathlib, runpy, sys, time
from peftbench.runner.checkpoint import Checkpointer

due, marker = Checkpointer.due, pathlib.Path(sys.argv[1])
def slow_due(self, step):
    if step == 3:
        marker.touch()
    time.sleep(0.05)
    return due(self, step)
Checkpointer.due = slow_due
sys.argv = ["run.py", *sys.argv[2:]]
runpy.run_path("run.py", run_name="__main__")
"""

LONG = ("train.max_steps=60", "train.eval_every_steps=1000", "train.checkpoint_every_steps=1000")


def past_step_3(overrides, marker) -> subprocess.Popen:
    """The slowed run, started in a subprocess, once its step 3 is done."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, str(marker), *overrides],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.02)
    return proc


def _records(results):
    return [json.loads(p.read_text()) for p in sorted(records_dir(results).glob("*.json"))]


# SIGTERM (what schedulers send) in the default run; the other two take the same path
# through stop_on_signals and run with the slow tests (.ci/run runs both)
@pytest.mark.parametrize(
    "signum",
    [
        signal.SIGTERM,
        pytest.param(signal.SIGINT, marks=pytest.mark.slow),
        pytest.param(signal.SIGUSR2, marks=pytest.mark.slow),
        pytest.param(signal.SIGHUP, marks=pytest.mark.slow),  # a closed terminal or ssh
    ],
)
def test_a_signal_leaves_an_interrupted_record_and_a_checkpoint_the_rerun_resumes(
    tiny_bert_dir, tmp_path, signum
):
    results = tmp_path / "results"
    overrides = tiny_overrides(tiny_bert_dir, results, *LONG)
    proc = past_step_3(overrides, tmp_path / "step3")
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)

    assert proc.returncode == 128 + signum, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    (line,) = [ln for ln in stderr.splitlines() if ln.startswith("peftbench: ")]
    assert f"interrupted by {signal.Signals(signum).name} after step" in line
    (record,) = _records(results)
    assert record["status"] == "interrupted" and record["traceback"] is None
    step = record["error_step"]
    assert step >= 3 and f"resumes from step {step}" in record["error"]
    (checkpoint,) = (results / "checkpoints").glob(f"{record['run_id']}.safetensors")

    done = subprocess.run(
        [sys.executable, "run.py", *overrides], cwd=ROOT, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming from step {step}" in done.stdout + done.stderr
    success = [r for r in _records(results) if r["status"] == "success"]
    assert [r["run_id"] for r in success] == [record["run_id"]]
    assert success[0]["cost"]["checkpoint"]["resumed_from_step"] == step
    cost = success[0]["cost"]  # the wall time counts the loop before the stop too
    timed = sum(v for k, v in cost["wall_parts_s"].items() if k != "startup_s")
    assert timed == pytest.approx(cost["wall_s"], abs=1e-3)
    assert not checkpoint.exists()  # removed after the success
