"""`python run.py -m ...` end to end through Hydra's real launcher, on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from peftbench.record import records_dir
from tests.conftest import ROOT, tiny_overrides


def _sweep(tiny_bert_dir, results):
    command = [
        sys.executable,
        "run.py",
        "-m",
        "method=lora,adapter",
        *tiny_overrides(tiny_bert_dir, results),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout + done.stderr


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
