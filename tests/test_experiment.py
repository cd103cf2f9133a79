"""One cell end to end on the tiny model: the record, skip-if-done and failure records."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from peftbench.records.store import find_success, records_dir
from peftbench.runner import experiment

REQUIRED = {
    "schema_version",
    "run_id",
    "status",
    "error",
    "experiment",
    "config",
    "code",
    "env",
    "data",
    "params",
    "cost",
    "metrics",
    "history",
}


def _records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(records_dir(results).glob("*.json"))]


def test_record_has_the_schema_and_honest_counts(compose, tmp_path):
    cfg = compose("method=lora", "instrument.inference=true")  # the one test that measures it
    summary = experiment.run(cfg)
    assert summary["status"] == "success"
    (record,) = _records(tmp_path / "results")
    assert set(record) >= REQUIRED
    assert re.fullmatch(r"polarity--tiny-bert--lora--s0--[0-9a-f]{8}", record["run_id"])
    assert record["run_id"] == summary["run_id"]
    assert record["experiment"]["method"] == "lora" and record["experiment"]["seed"] == 0
    assert record["config"]["method"]["lr"] == 5e-4  # the fully resolved config
    assert record["data"]["n"] == {"train": 64, "dev": 8, "test": 8}
    assert record["data"]["synthetic"] is False  # a real corpus (synthetic-1024 says true)
    params = record["params"]
    assert 0 < params["trainable"] < params["base"] <= params["total"]
    assert params["trainable_pct"] == pytest.approx(100 * params["trainable"] / params["base"])
    assert params["head_modules"] == ["classifier"] and params["artifact_bytes"] > 0
    assert params["stored"] == params["trainable"]  # LoRA keeps what it trains
    assert params["stored_pct"] == pytest.approx(params["trainable_pct"])
    cost = record["cost"]
    assert cost["step_time_s"]["n"] + cost["step_time_s"]["warmup_n"] == 4
    assert cost["step_time_s"]["p50"] <= cost["step_time_s"]["p90"] <= cost["step_time_s"]["p99"]
    assert cost["train_time_s"] > 0 and cost["samples_per_s"] > 0
    assert cost["peak_mem_bytes"]["rss"] > 0
    forward = params["total"] - 32 * (31 + 64 + 2)  # less the word, position, type embeddings
    assert cost["flops_per_token_analytic"] == 4 * forward + 2 * params["trainable"]
    assert cost["flops_per_token"] > 0  # counted on one step: tests/test_costs.py
    assert cost["flops"] > 0 and 0 < cost["mfu"] < 1  # against the measured CPU peak
    inference = cost["inference"]
    assert inference["unmerged"]["samples_per_s"] > 0
    assert inference["merged"]["n_batches"] == 1  # LoRA merges; 8 test examples = 1 batch
    metrics = record["metrics"]
    assert metrics["primary"] == {
        "name": "accuracy",
        "split": "test",
        "value": metrics["test"]["accuracy"],
        "higher_is_better": True,
    }
    assert metrics["selected_step"] in (2, 4)
    assert [row["step"] for row in record["history"] if "dev/accuracy" in row] == [2, 4]


def test_inference_latency_is_measured_once_per_recipe_unless_every_seed_is_asked(
    compose, tmp_path
):
    """The seed cannot change forward latency: under ``once`` (the default) the second seed
    of a recipe points at the first's figures instead of spending its time again."""
    first, second = (
        json.loads(Path(experiment.run(compose("method=lora", f"seed={s}",
                                               "instrument.inference=once"))["path"]).read_text())
        for s in (0, 1)
    )  # fmt: skip
    assert first["cost"]["inference"]["unmerged"]["samples_per_s"] > 0
    assert first["cost"]["inference_measured_in"] is None
    assert second["cost"]["inference"] is None
    assert second["cost"]["inference_measured_in"] == first["run_id"]
    other = compose("method=lora", "seed=2", "method.lr=1e-3", "instrument.inference=once")
    third = json.loads(Path(experiment.run(other)["path"]).read_text())  # another recipe
    assert third["cost"]["inference"] is not None
    every = compose("method=lora", "seed=3", "instrument.inference=every")
    fourth = json.loads(Path(experiment.run(every)["path"]).read_text())
    assert fourth["cost"]["inference"] is not None
    assert fourth["cost"]["inference_measured_in"] is None


def test_a_second_run_skips_a_done_cell(compose, tmp_path):
    cfg = compose("method=lora")
    assert experiment.run(cfg)["status"] == "success"
    again = experiment.run(cfg)
    assert again["status"] == "skipped"
    assert len(_records(tmp_path / "results")) == 1
    assert experiment.run(compose("method=lora", "force=true"))["status"] == "success"
    assert len(_records(tmp_path / "results")) == 2


def test_a_failing_run_writes_a_failed_record_and_does_not_raise(compose, tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr("peftbench.runner.train.train", explode)
    summary = experiment.run(compose("method=lora"))
    assert summary["status"] == "failed"
    (record,) = _records(tmp_path / "results")
    assert record["status"] == "failed"
    assert record["error"] == "RuntimeError: injected failure"
    assert "metrics" not in record
    # a failure is not "done": the next sweep retries it
    assert find_success(tmp_path / "results", record["run_id"]) is None


def test_same_seed_gives_identical_results(compose, tmp_path):
    first = experiment.run(compose("method=adapter", results_dir=tmp_path / "a"))
    second = experiment.run(compose("method=adapter", results_dir=tmp_path / "b"))
    a, b = (json.loads(Path(s["path"]).read_text()) for s in (first, second))
    assert a["metrics"] == b["metrics"]

    def learning(history: list[dict]) -> list[dict]:  # without the clock and memory readings
        return [
            {k: v for k, v in row.items() if not k.endswith(("_s", "_bytes"))} for row in history
        ]

    assert learning(a["history"]) == learning(b["history"])
    assert any("train/loss" in row for row in learning(a["history"]))


def test_second_run_reads_tokenized_splits_from_the_cache(compose, tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))
    first = experiment.run(compose("method=lora", "data_cache=true"))
    second = experiment.run(compose("method=lora", "data_cache=true", "force=true"))
    a, b = (json.loads(Path(s["path"]).read_text()) for s in (first, second))
    assert {s: t["hit"] for s, t in a["data"]["tokenize"].items()} == dict.fromkeys(
        ("train", "dev", "test"), False
    )
    assert all(t["hit"] for t in b["data"]["tokenize"].values())
    assert len(list((tmp_path / "cache" / "tokenized").glob("*.json"))) == 3
    assert a["metrics"] == b["metrics"]  # cached features train exactly the same
