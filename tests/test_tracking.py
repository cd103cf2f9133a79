"""The wandb run mirrors the record: same config, summary = the record (without history)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

from peftbench.records.tracking import flatten
from peftbench.runner import experiment


class FakeRun:
    def __init__(self, **kwargs):
        self.init = kwargs
        self.logged: list[tuple[dict, int]] = []
        self.summary: dict = {}
        self.exit_code = None

    id = "fake-run"

    def log(self, row, step=None):
        self.logged.append((row, step))

    def finish(self, exit_code=0):
        self.exit_code = exit_code


def _fake_wandb(monkeypatch) -> list[FakeRun]:
    runs: list[FakeRun] = []
    module = types.ModuleType("wandb")
    module.Settings = lambda **kwargs: kwargs

    def init(**kwargs):
        runs.append(FakeRun(**kwargs))
        return runs[-1]

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return runs


def test_wandb_config_and_summary_mirror_the_record(compose, monkeypatch):
    runs = _fake_wandb(monkeypatch)
    summary = experiment.run(compose("method=adapter", "tracker=wandb", "sweep_id=sweep-1"))
    record = json.loads(Path(summary["path"]).read_text())
    (run,) = runs
    assert run.init["mode"] == "offline"  # the default: no network needed
    assert run.init["config"] == record["config"]
    assert run.init["group"] == "sweep-1" and run.init["job_type"] == "adapter"
    assert run.init["tags"] == ["task:polarity", "model:tiny-bert"]
    assert run.summary["metrics/test/accuracy"] == record["metrics"]["test"]["accuracy"]
    assert run.summary["params/trainable"] == record["params"]["trainable"]
    assert "history" not in run.summary and run.exit_code == 0
    logged_keys = set().union(*(row for row, _ in run.logged))
    assert {"train/loss", "train/lr", "dev/accuracy", "test/accuracy"} <= logged_keys


def test_a_tracker_that_cannot_start_does_not_lose_the_record(compose, monkeypatch):
    module = types.ModuleType("wandb")
    module.Settings = lambda **kwargs: kwargs

    def init(**kwargs):
        raise RuntimeError("no wandb here")

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    assert experiment.run(compose("method=lora", "tracker=wandb"))["status"] == "success"


def test_flatten_joins_nested_keys():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": [1]}) == {"a/b": 1, "a/c/d": 2, "e": [1]}


def test_an_offline_wandb_run_can_be_read_back(compose, tmp_path, monkeypatch):
    """Real wandb, offline: what the .wandb file holds is what the record says."""
    from tests.support.wandb_log import read_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    summary = experiment.run(compose("method=lora", "tracker=wandb", "sweep_id=s-42"))
    record = json.loads(Path(summary["path"]).read_text())
    import wandb

    wandb.teardown()  # wandb-core flushes the offline log when its service stops
    (log_file,) = (tmp_path / "results" / "wandb").glob("offline-run-*/run-*.wandb")
    run = read_run(log_file)
    assert run["run"] == {
        "name": record["run_id"],
        "group": "s-42",
        "job_type": "lora",
        "tags": ["task:polarity", "model:tiny-bert"],
    }
    config = {k: v.get("value", v) if isinstance(v, dict) else v for k, v in run["config"].items()}
    assert config["method"] == record["config"]["method"]
    assert run["summary"]["metrics/test/accuracy"] == record["metrics"]["test"]["accuracy"]
    assert run["summary"]["params/trainable"] == record["params"]["trainable"]
    losses = [row["train/loss"] for row in run["history"] if "train/loss" in row]
    assert losses == [row["train/loss"] for row in record["history"] if "train/loss" in row]
    assert all("train/step_time_s" in row for row in run["history"] if "train/loss" in row)


def _sweep_end(results: Path, tracker: str, sweep_id: str = "sweep-7") -> None:
    from omegaconf import OmegaConf

    from peftbench.launch.callbacks import ReportAtSweepEnd
    from tests.conftest import ROOT

    config = OmegaConf.create(
        {
            "results_dir": str(results),
            "sweep_id": sweep_id,
            "tracker": OmegaConf.load(ROOT / "conf" / "tracker" / f"{tracker}.yaml"),
        }
    )
    ReportAtSweepEnd().on_multirun_end(config)


def test_the_sweep_report_is_one_offline_wandb_run_in_the_sweeps_group(tmp_path, monkeypatch):
    """Real wandb, offline: the report run holds comparison.csv as a table and the PNGs."""
    import hashlib

    import pandas as pd
    import wandb

    from tests.support.wandb_log import read_run
    from tests.test_low_resource import _low_resource_records

    monkeypatch.setenv("WANDB_MODE", "offline")
    results = tmp_path / "results"
    results.mkdir()
    _low_resource_records(results)
    _sweep_end(results, "wandb")
    wandb.teardown()
    (log_file,) = (results / "wandb").glob("offline-run-*/run-*.wandb")
    run = read_run(log_file)
    assert run["run"] == {
        "name": "report-sweep-7", "group": "sweep-7", "job_type": "report", "tags": []
    }  # fmt: skip
    (row,) = run["history"]
    files = log_file.parent / "files"
    assert row["comparison/_type"] == "table-file"
    logged = json.loads((files / row["comparison/path"]).read_text())
    csv = pd.read_csv(results / "report" / "comparison.csv")
    assert logged["columns"] == list(csv.columns)
    assert [r[1] for r in logged["data"]] == list(csv["method"])  # every row of the table
    pngs = sorted((results / "report").glob("*.png"))
    assert "score_vs_train_size.png" in {p.name for p in pngs}
    for png in pngs:
        key = f"plots/{png.stem}"
        assert row[f"{key}/_type"] == "image-file", key
        assert row[f"{key}/sha256"] == hashlib.sha256(png.read_bytes()).hexdigest()


def test_tracker_none_logs_no_report_run(tmp_path, monkeypatch):
    from tests.test_low_resource import _low_resource_records

    runs = _fake_wandb(monkeypatch)
    sys.modules["wandb"].Image = lambda path: ("image", Path(path).name)
    sys.modules["wandb"].Table = lambda dataframe: ("table", len(dataframe))
    results = tmp_path / "results"
    results.mkdir()
    _low_resource_records(results)
    _sweep_end(results, "none")
    assert (results / "report" / "comparison.md").is_file() and runs == []
    _sweep_end(results, "wandb")
    (run,) = runs
    assert run.init["mode"] == "offline" and run.init["job_type"] == "report"
    assert run.init["group"] == "sweep-7" and run.exit_code == 0
    ((row, _),) = run.logged
    assert row["comparison"] == ("table", 5)  # the 5 rows of the comparison table
    assert row["plots/score_vs_train_size"] == ("image", "score_vs_train_size.png")
