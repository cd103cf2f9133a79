"""`peftbench reproduce RUN_ID`: re-run a recorded cell on the tiny model and compare metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from analysis import reproduce as rep
from peftbench.cli import main
from peftbench.records.store import find_success, records_dir
from peftbench.runner import experiment
from tests.conftest import ROOT, tiny_overrides

RUN_ID = "polarity--tiny-bert--lora--s1"  # a made-up record's id; real runs read theirs


def _record_in_process(tiny_bert_dir: Path, results: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Runs the cell as run.py would, with its overrides recorded, without a subprocess."""
    overrides = tiny_overrides(tiny_bert_dir, results, "method=lora", "seed=1")
    monkeypatch.setattr(experiment, "_hydra_overrides", lambda: overrides)
    summary = experiment.run(rep.compose(overrides))
    assert summary["status"] == "success"
    return Path(summary["path"])


@pytest.mark.slow  # a subprocess path; CI runs it with `pytest -m slow`
def test_a_cell_run_by_run_py_reproduces_identically(tiny_bert_dir, tmp_path, capsys):
    results = tmp_path / "results"
    command = [sys.executable, "run.py", *tiny_overrides(tiny_bert_dir, results, "seed=1")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = records_dir(results).glob("*__success.json")
    run_id = json.loads(path.read_text())["run_id"]
    assert run_id.startswith("polarity--tiny-bert--lora--s1")
    record = json.loads(find_success(results, run_id).read_text())
    assert "seed=1" in record["experiment"]["overrides"]  # Hydra's override list was recorded

    assert main(["reproduce", run_id, "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith(f"{run_id}: IDENTICAL")
    assert "config changed" not in out
    for name in ("primary", "selected_step", "dev/accuracy", "test/accuracy"):
        assert f"{name} " in out
    assert "!=" not in out
    # The reproduction wrote into a temporary folder, never next to the original record.
    assert len(list(records_dir(results).glob("*.json"))) == 1


def test_a_different_result_is_reported_metric_by_metric(
    tiny_bert_dir, tmp_path, capsys, monkeypatch
):
    results = tmp_path / "results"
    path = _record_in_process(tiny_bert_dir, results, monkeypatch)
    record = json.loads(path.read_text())
    # A newer success record of the same run whose test score differs by 0.125 (and whose
    # config says lr was 1e-3): reproduce must compare against this newest one.
    recorded = record["metrics"]["test"]["accuracy"]
    record["metrics"]["test"]["accuracy"] = record["metrics"]["primary"]["value"] = recorded + 0.125
    record["config"]["method"]["lr"] = 1e-3
    run_id = record["run_id"]
    newer = path.with_name(f"{run_id}__99991231T000000000000Z__success.json")
    newer.write_text(json.dumps(record))

    assert main(["reproduce", run_id, "--results", str(results)]) == 1
    out = capsys.readouterr().out
    assert f"recorded {recorded + 0.125!r} != reproduced {recorded!r} (diff -0.125)" in out
    assert "config changed since the run: method.lr: 0.001 -> 0.0005" in out
    assert "dev/accuracy" in out and "(identical)" in out  # dev was not touched
    assert out.rstrip().endswith(f"{run_id}: DIFFERENT")


def test_reproduce_needs_a_success_record_with_overrides(tmp_path, capsys):
    results = tmp_path / "results"
    folder = records_dir(results)
    folder.mkdir(parents=True)
    assert main(["reproduce", RUN_ID, "--results", str(results)]) == 2
    assert "no success record" in capsys.readouterr().err
    primary = {"name": "accuracy", "split": "test", "value": 0.5, "higher_is_better": True}
    experiment = {"task": "polarity", "model": "tiny-bert", "method": "lora", "seed": 1}
    old = {  # a valid record (only those count: issue 36), written before overrides were kept
        "schema_version": 1, "run_id": RUN_ID, "status": "success", "experiment": experiment,
        "metrics": {"primary": primary},
    }  # fmt: skip
    (folder / f"{RUN_ID}__20260101T000000000000Z__success.json").write_text(json.dumps(old))
    assert main(["reproduce", RUN_ID, "--results", str(results)]) == 2
    assert "no experiment.overrides" in capsys.readouterr().err


def test_compare_metrics_pairs_every_metric_and_missing_ones_differ() -> None:
    recorded = {"primary": {"value": 0.5}, "selected_step": 4, "dev": {"accuracy": 0.5},
                "test": {"accuracy": 0.5, "f1": 0.4}}  # fmt: skip
    diffs = rep.compare_metrics(recorded, {})  # a failed re-run has no metrics
    assert [d.name for d in diffs] == ["primary", "selected_step", "dev/accuracy",
                                       "test/accuracy", "test/f1"]  # fmt: skip
    assert not any(d.identical for d in diffs)
    assert all(d.identical for d in rep.compare_metrics(recorded, json.loads(json.dumps(recorded))))


def test_config_changes_ignore_run_local_keys() -> None:
    recorded = {"seed": 1, "results_dir": "a", "sweep_id": "x", "tracker": {"name": "wandb"},
                "train": {"lr": 1.0, "epochs": 2}}  # fmt: skip
    now = {"seed": 1, "results_dir": "b", "sweep_id": "y", "tracker": {"name": "none"},
           "train": {"lr": 2.0}, "device": "cpu"}  # fmt: skip
    assert rep.config_changes(recorded, now) == [
        "device: '<absent>' -> 'cpu'",
        "train.epochs: 2 -> '<absent>'",
        "train.lr: 1.0 -> 2.0",
    ]
