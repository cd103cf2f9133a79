"""Progress lines where no progress bar is drawn (a lane log, a Slurm .out file)."""

from __future__ import annotations

import logging
import re

from peftbench.runner import experiment
from peftbench.runner.text_progress import TextProgress


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "peftbench"]


def test_a_line_every_tenth_of_the_run_with_the_time_left(caplog):
    caplog.set_level(logging.INFO, logger="peftbench")
    progress = TextProgress("run-a", 213, enabled=True)
    for step in range(1, 214):
        progress.step(step, loss=0.5)
    lines = _lines(caplog)
    steps = [int(re.search(r"step (\d+)/213", line).group(1)) for line in lines]
    assert steps == [22, 44, 66, 88, 110, 132, 154, 176, 198]  # tenths of 213, rounded up
    assert lines[0].startswith("run-a: step 22/213 (10%), ") and "left, loss 0.5000" in lines[0]


def test_a_resumed_run_goes_on_from_its_step_and_a_disabled_one_says_nothing(caplog):
    caplog.set_level(logging.INFO, logger="peftbench")
    resumed = TextProgress("run-b", 100, first_step=55, enabled=True)
    for step in range(56, 71):
        resumed.step(step, loss=1.0)
    assert [re.search(r"step (\d+)/", line).group(1) for line in _lines(caplog)] == ["60", "70"]
    caplog.clear()
    quiet = TextProgress("run-c", 100, enabled=False)
    for step in range(1, 101):
        quiet.step(step, loss=1.0)
    quiet.dev(100, "accuracy", 0.9, 0.9)
    assert _lines(caplog) == []


def test_a_run_in_a_log_file_says_where_it_is_and_its_dev_score(compose, caplog):
    caplog.set_level(logging.INFO, logger="peftbench")
    summary = experiment.run(compose("method=lora"))  # pytest's stderr is no terminal
    lines = [line for line in _lines(caplog) if "/4 (" in line]
    assert [re.search(r"step (\d)/4", line).group(1) for line in lines if "loss" in line] == [
        "1", "2", "3", "4",
    ]  # fmt: skip
    devs = [line for line in lines if ", dev " in line]  # every 2 steps and at the end
    assert [re.search(r"step (\d)/4", line).group(1) for line in devs] == ["2", "4"]
    assert devs[-1].startswith(f"{summary['run_id']}: step 4/4 (100%), ")
    assert re.search(r", \d+ s, dev accuracy \d\.\d{4} \(best \d\.\d{4}\)$", devs[-1])
