"""The record schema (records/schema.py) is what the writer writes and the reader reads."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from peftbench.records.schema import (
    SCHEMA_VERSION,
    Experiment,
    Metrics,
    Params,
    Primary,
    Record,
    SchemaError,
)
from peftbench.runner import experiment
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "records"


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_a_run_writes_exactly_the_schema_sections_and_reads_back(compose, tmp_path):
    summary = experiment.run(compose("method=lora"))
    raw = json.loads(Path(summary["path"]).read_text())
    assert raw["schema_version"] == SCHEMA_VERSION
    # the writer goes through the dataclasses: no key on one side only
    assert set(raw["experiment"]) == _fields(Experiment)
    assert set(raw["params"]) == _fields(Params)
    assert set(raw["metrics"]) == _fields(Metrics)
    assert set(raw["metrics"]["primary"]) == _fields(Primary)

    record = Record.from_json(raw)
    assert record.run_id == summary["run_id"] and record.status == "success"
    assert record.primary == Primary(**summary["primary"])
    assert record.experiment.recipe_hash == summary["run_id"].rsplit("--", 1)[1]
    assert 0 < record.params.trainable < record.params.total
    assert record.params.trainable_pct == pytest.approx(
        100 * record.params.trainable / record.params.base
    )


def test_schema_1_records_and_failures_read():
    paths = [p for p in FIXTURES.rglob("*.json") if p.name != "corrupt.json"]
    records = [Record.from_json(json.loads(p.read_text())) for p in paths]
    assert records and {r.schema_version for r in records} == {1}
    oom = next(r for r in records if r.status == "oom")
    assert oom.primary is None and oom.experiment.method == "prompt"
    assert all(r.primary.value is not None for r in records if r.status == "success")


def _record(**changes) -> dict:
    path = FIXTURES / "2026-11-23_11-00-00" / "polarity--minilm-l6--lora--s0.json"
    return json.loads(path.read_text()) | changes


def test_a_runs_wall_time_covers_a_resumed_loop_in_older_records():
    """Before 2026-12-07 a resumed run's wall_s held only its last process (bbc-news BitFit:
    274 s of 508 s); its parts held the whole loop, and the reader takes those."""
    parts = {"startup_s": 25.0, "setup_s": 4.0, "train_s": 456.0, "dev_eval_s": 45.0,
             "loop_other_s": 0.0, "test_s": None, "predictions_s": 3.0}  # fmt: skip
    resumed = Record.from_json(_record(cost={"wall_s": 274.0, "wall_parts_s": parts}))
    assert resumed.wall_s == 508.0  # start-up (before the run) counts in neither
    whole = Record.from_json(_record(cost={"wall_s": 600.0, "wall_parts_s": parts}))
    assert whole.wall_s == 600.0
    assert Record.from_json(_record(cost={"wall_s": 80.0})).wall_s == 80.0  # no parts yet
    assert Record.from_json(_record(cost=None)).wall_s is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([1, 2], "not a run record"),
        (_record(schema_version=99), r"schema_version 99 \(this code reads \(1, 2\)\)"),
        (_record(experiment={"task": "polarity", "model": "m"}), "experiment lacks method"),
        (_record(metrics={"primary": {"value": 0.5}}), "metrics.primary lacks name, split"),
        (_record(params=[]), "params: expected an object, got list"),
    ],
)
def test_what_is_not_a_readable_record_is_named(value, message):
    with pytest.raises(SchemaError, match=message):
        Record.from_json(value)


def test_a_failed_run_leaves_a_record_without_params_or_metrics(compose, tmp_path, monkeypatch):
    import peftbench.methods as methods

    def broken(model, cfg, ctx):
        raise RuntimeError("a method that breaks")

    monkeypatch.setattr(methods, "apply_method", broken)
    summary = experiment.run(compose("method=lora"))
    assert summary["status"] == "failed"
    record = Record.from_json(json.loads(Path(summary["path"]).read_text()))
    assert record.status == "failed" and "a method that breaks" in record.error
    assert record.params is None and record.primary is None
    assert record.experiment.method == "lora"
