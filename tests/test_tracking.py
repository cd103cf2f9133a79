"""The wandb run mirrors the record: same config, summary = the record (without history)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

from peftbench import experiment
from peftbench.tracking import flatten


class FakeRun:
    def __init__(self, **kwargs):
        self.init = kwargs
        self.logged: list[tuple[dict, int]] = []
        self.summary: dict = {}
        self.exit_code = None

    def log(self, row, step):
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
