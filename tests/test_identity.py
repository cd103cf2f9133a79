"""Run identity = the recipe: every value that can change a result, and nothing else."""

from __future__ import annotations

import json
import os
import re
import stat

import pytest
from omegaconf import OmegaConf

from peftbench.config.identity import NOT_IN_RECIPE, recipe, recipe_hash, run_id
from peftbench.records.store import records_dir
from peftbench.runner import experiment


def _hash(compose, *overrides: str) -> str:
    config = OmegaConf.to_container(compose(*overrides), resolve=True)
    return recipe_hash(recipe(config))


# Each changes only where results go, how they are logged or how the work is spread.
OUT_OVERRIDES = [
    "results_dir=/tmp/elsewhere",
    "sweep_id=other-sweep",
    "force=true",
    "tracker=wandb",
    "data_cache=true",
    "memory_guard=false",
    "instrument.inference=false",
    "instrument.peak_tflops=989",
    "train.threads=1",
    "train.log_every_steps=7",
    "train.num_workers=2",
    "train.checkpoint_every_steps=3",
    "train.keep_checkpoints=true",
    "seed=1",  # the seed is in the run id on its own; seeds of one recipe aggregate
]

# Each can move the score: a sample across the method, train, task and model groups.
IN_OVERRIDES = [
    "method.lr=1e-3",
    "method.peft.r=16",
    "method.peft.lora_alpha=32",
    "method.peft.lora_dropout=0.0",
    "+method.budget_pct=0.5",
    "method=adapter",
    "train.epochs=3",
    "train.max_steps=5",
    "train.batch_size=4",
    "train.warmup_ratio=0.1",
    "train.weight_decay=0.0",
    "train.eval_every_steps=1",
    "train.eval_batch_size=4",
    "train.precision=bf16",
    "task.max_length=16",
    "task.version=99",
    "task.source.path=/tmp/other.csv",
    "model.source.path=/tmp/other-model",
    "model.attn_implementation=eager",  # another kernel: another rounding
    "model.padding_side=left",  # another layout: a decoder's classifier reads another token
    "device=cuda:1",  # its kind (cuda vs cpu), not its index
]


@pytest.mark.parametrize("override", OUT_OVERRIDES)
def test_a_key_that_cannot_change_the_result_leaves_the_hash_alone(compose, override):
    assert _hash(compose, override) == _hash(compose)


@pytest.mark.parametrize("override", IN_OVERRIDES)
def test_a_key_that_can_change_the_result_changes_the_hash(compose, override):
    assert _hash(compose, override) != _hash(compose)


def test_the_default_attention_kernel_and_padding_keep_the_ids_runs_had_before_the_keys(compose):
    config = OmegaConf.to_container(compose(), resolve=True)
    assert config["model"]["attn_implementation"] is None
    assert config["model"]["padding_side"] is None
    before = {**config, "model": {k: v for k, v in config["model"].items()
                                  if k not in ("attn_implementation", "padding_side")}}  # fmt: skip
    assert recipe(config) == recipe(before)


def test_the_device_index_is_not_in_the_recipe(compose):
    assert _hash(compose, "device=cuda:0") == _hash(compose, "device=cuda:1")


def test_every_out_key_is_tested():
    tested = {o.split("=")[0] for o in OUT_OVERRIDES}
    for key in NOT_IN_RECIPE:
        if key != "hydra":  # not part of a composed job config; never hashed
            assert any(t == key or t.startswith(key + ".") for t in tested), key


def test_the_hash_is_stable_across_spellings_and_machines():
    # a fixed value: the hash must not depend on dict order, Python version or 2.0 vs 2
    values = {"method.lr": 0.001, "train.epochs": 2.0, "device": "cpu"}
    assert recipe_hash(values) == recipe_hash({"device": "cpu", "train.epochs": 2, **values})
    assert re.fullmatch(r"[0-9a-f]{8}", recipe_hash(values))
    assert run_id("polarity", "minilm-l6", "lora", 0, "3f9a1c2e") == (
        "polarity--minilm-l6--lora--s0--3f9a1c2e"
    )


def _records(results):
    return [json.loads(p.read_text()) for p in sorted(records_dir(results).glob("*.json"))]


def test_another_learning_rate_is_another_run_not_a_skip(compose, tmp_path):
    first = experiment.run(compose("method.lr=1e-3"))
    second = experiment.run(compose("method.lr=1e-2"))
    assert first["status"] == second["status"] == "success"
    assert first["run_id"] != second["run_id"]
    again = experiment.run(compose("method.lr=1e-3", "tracker=wandb", "train.threads=1"))
    assert again["status"] == "skipped" and again["run_id"] == first["run_id"]
    records = _records(tmp_path / "results")
    assert [r["config"]["method"]["lr"] for r in records].count(1e-3) == 1
    (record,) = [r for r in records if r["run_id"] == first["run_id"]]
    assert record["experiment"]["recipe"]["method.lr"] == 1e-3
    assert record["experiment"]["recipe_hash"] == first["run_id"].rsplit("--", 1)[1]


@pytest.mark.parametrize("steps", [1, 2])
def test_a_run_shorter_than_the_timer_warm_up_succeeds_with_null_step_costs(
    compose, tmp_path, steps
):
    # train.warmup_steps_excluded=1 in the tiny overrides; 5 is the default
    summary = experiment.run(compose(f"train.max_steps={steps}", "train.warmup_steps_excluded=5"))
    assert summary["status"] == "success", summary
    (record,) = _records(tmp_path / "results")
    cost = record["cost"]
    assert cost["step_time_s"]["n"] == 0 and cost["step_time_s"]["p50"] is None
    assert "warm-up" in cost["step_time_s"]["why_null"]
    assert cost["train_time_s"] > 0


def test_records_are_readable_as_the_umask_allows(compose, tmp_path):
    old = os.umask(0o022)
    try:
        experiment.run(compose())
    finally:
        os.umask(old)
    (path,) = records_dir(tmp_path / "results").glob("*.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_run_that_needs_more_memory_than_is_free_is_recorded_as_oom(
    compose, tmp_path, monkeypatch
):
    from peftbench.runner import memory_guard

    monkeypatch.setattr(memory_guard, "headroom_bytes", lambda: 0)  # nothing free: any new
    summary = experiment.run(compose())  # allocation of the run fails, as a huge batch's would
    assert summary["status"] == "oom", summary
    (record,) = _records(tmp_path / "results")
    assert "allocate memory" in record["error"] and "train.batch_size" in record["error"]
    import resource

    assert resource.getrlimit(resource.RLIMIT_DATA)[0] == resource.RLIM_INFINITY  # restored
