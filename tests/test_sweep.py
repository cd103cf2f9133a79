"""`python run.py -m ...` end to end through Hydra's real launcher, on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from peftbench.records.store import records_dir
from tests.conftest import ROOT, tiny_overrides


def _sweep(tiny_bert_dir, results, *sweep: str):
    command = [
        sys.executable,
        "run.py",
        "-m",
        *(sweep or ["method=lora,adapter"]),
        *tiny_overrides(tiny_bert_dir, results),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout + done.stderr


@pytest.mark.slow  # a subprocess path; CI runs it with `pytest -m slow`
def test_sweep_writes_records_and_a_report_then_skips_when_rerun(tiny_bert_dir, tmp_path):
    results = tmp_path / "results"
    output = _sweep(tiny_bert_dir, results)
    records = sorted(records_dir(results).glob("*.json"))
    assert [json.loads(p.read_text())["status"] for p in records] == ["success", "success"]
    assert {json.loads(p.read_text())["experiment"]["method"] for p in records} == {
        "lora",
        "adapter",
    }
    report = results / "report"
    for name in ("comparison.md", "comparison.csv", "score_vs_params.png"):
        assert (report / name).stat().st_size > 0, name
        assert str(report / name) in output  # the paths are printed
    assert "| lora" in (report / "comparison.md").read_text()

    again = _sweep(tiny_bert_dir, results)
    assert again.count("already done, skipping") == 2
    assert sorted(records_dir(results).glob("*.json")) == records  # nothing trained or written


def test_a_2x2_recipe_sweep_trains_4_runs_shows_4_rows_and_reruns_nothing(tiny_bert_dir, tmp_path):
    results = tmp_path / "results"
    grid = ("method=lora", "method.lr=1e-3,1e-2", "method.peft.r=2,4", "train.max_steps=2")
    _sweep(tiny_bert_dir, results, *grid)
    records = sorted(records_dir(results).glob("*.json"))
    assert len({json.loads(p.read_text())["run_id"] for p in records}) == 4
    table = (results / "report" / "comparison.md").read_text()
    for label in ("lora (lr=0.001, r=2)", "lora (lr=0.001, r=4)", "lora (lr=0.01, r=2)"):
        assert f"| {label} " in table, table
    assert "| lora (lr=0.01, r=4) " in table

    again = _sweep(tiny_bert_dir, results, *grid)
    assert again.count("already done, skipping") == 4
    assert sorted(records_dir(results).glob("*.json")) == records
