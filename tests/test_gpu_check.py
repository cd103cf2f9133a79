"""The GPU check's parts, on CPU: the synthetic task, the carry folder, the cost table, and
``scripts/gpu_check.sh`` itself (its ``--cpu-smoke`` mode runs every step on tiny models)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from peftbench.errors import ConfigError
from scripts import carry, cost_table, sweep_compare
from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _task_cfg(**source):
    from peftbench.measure.overhead import compose

    cfg = compose(["task=synthetic-1024", "model=llama-1b-synthetic"]).task
    for key, value in source.items():
        OmegaConf.update(cfg, key, value)
    return cfg


# -- the synthetic batch source -----------------------------------------------------------
def test_synthetic_rows_are_fixed_length_seeded_and_the_same_every_time():
    from tasks import build_task

    cfg = _task_cfg()
    first, again = build_task(cfg).splits, build_task(_task_cfg()).splits
    assert {k: len(v) for k, v in first.items()} == {"train": 256, "dev": 8, "test": 8}
    assert first == again  # deterministic: no file, no global RNG
    ids = [i for rows in first.values() for row in rows for i in row["input_ids"]]
    assert {len(r["input_ids"]) for rows in first.values() for r in rows} == {1024}
    assert min(ids) >= 0 and max(ids) < 49152 and len(set(ids)) > 40000
    assert first["train"][0] != first["dev"][0]  # splits are separate draws
    other = build_task(_task_cfg(**{"source.seed": 7})).splits
    assert other["train"][0] != first["train"][0]
    assert build_task(cfg).fingerprint == build_task(_task_cfg()).fingerprint


def test_synthetic_batches_are_causal_lm_targets_with_no_padding():
    from tasks import build_task

    task = build_task(_task_cfg(**{"max_length": 8, "source.n.train": 3}))
    features = task.encode(task.splits["train"], tokenizer=None)
    batch = task.collate(features, tokenizer=None)
    assert batch["input_ids"].shape == (3, 8) and bool(batch["attention_mask"].all())
    assert (batch["labels"] == batch["input_ids"]).all()  # the model shifts them itself
    assert task.count_truncated(features) == 0
    assert (task.head, task.peft_task_type) == ("causal_lm", "CAUSAL_LM")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"model_family": "encoder"}, "choose a decoder"),
        ({"source.vocab_size": 200000}, "exceeds the model's vocabulary (128256)"),
        ({"source.length": 512}, "differs from task.max_length"),
    ],
)
def test_a_synthetic_task_it_cannot_run_is_refused_in_one_line(change, words):
    from tasks import build_task

    with pytest.raises(ConfigError, match="; ") as error:  # "<problem>; <fix>"
        build_task(_task_cfg(**change))
    assert words in str(error.value) and "\n" not in str(error.value)


def test_a_synthetic_run_goes_through_the_experiment_and_says_its_data_is_synthetic(
    tiny_bert_dir, tmp_path
):
    from peftbench.measure.overhead import compose
    from peftbench.runner.experiment import run

    args = cost_table.main.__globals__["argparse"].Namespace(
        tokenizer=str(tiny_bert_dir), tiny=True, device="cpu", precision="fp32",
        batch_size=2, steps=3, warmup=1,
    )  # fmt: skip
    record = json.loads(
        Path(run(compose(cost_table.overrides(args, "lora", tmp_path)))["path"]).read_text()
    )
    assert record["status"] == "success", record["error"]
    assert record["data"]["synthetic"] is True and record["experiment"]["weights"] == "synthetic"
    assert record["data"]["n_truncated"] == {"train": 0, "dev": 0, "test": 0}
    assert record["cost"]["tokens_per_s"] == pytest.approx(record["cost"]["padded_tokens_per_s"])
    assert record["metrics"]["test"]["accuracy"] < 0.05  # next-token accuracy on random ids
    row = cost_table.row(record)
    assert row["method"] == "lora" and row["tokens_per_s"] > 0 and row["flops_per_token"] > 0


# -- the carry folder ---------------------------------------------------------------------
def test_the_tiny_carry_folder_has_the_real_layout_and_verifies(tmp_path):
    out = tmp_path / "carry"
    manifest = carry.build(out, tiny=True)
    for rel in ("minilm-l6/model.safetensors", "smollm2-tokenizer/tokenizer_config.json",
                "data/polarity.csv"):  # fmt: skip
        assert rel in manifest["files"]
    from safetensors import safe_open

    with safe_open(out / "minilm-l6" / "model.safetensors", "pt") as f:
        dtypes = {str(f.get_tensor(k).dtype) for k in f.keys()}  # noqa: SIM118
    assert "torch.bfloat16" in dtypes and "torch.float32" not in dtypes
    assert carry.verify(out) == []
    (out / "data" / "polarity.csv").write_text("tampered")
    assert carry.verify(out) == [
        "data/polarity.csv: changed (size or sha256 differs from the manifest)"
    ]


def test_a_carry_folder_over_the_limit_is_refused(tmp_path):
    with pytest.raises(carry.CarryError, match="over the 0 MiB that can travel"):
        carry.build(tmp_path / "carry", tiny=True, limit=1000)


@pytest.mark.slow
def test_the_real_carry_folder_fits_the_64_mib_limit(tmp_path):
    """From the cached assets: MiniLM in bf16, SmolLM2's tokenizer out of its GGUF file."""
    out = tmp_path / "carry"
    manifest = carry.build(out)
    assert manifest["total_bytes"] < carry.LIMIT_BYTES
    assert 40e6 < manifest["files"]["minilm-l6/model.safetensors"][0] < 50e6  # bf16: half of 91 MB
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(out / "smollm2-tokenizer")) == 49152


# -- the cost table -------------------------------------------------------------------------
def _record(method: str, cost: dict, gpu: str | None = "NVIDIA H200") -> dict:
    env = {"device": "cuda" if gpu else "cpu", "python": "3.11", "torch": "t", "peft": "p"}
    return {
        "run_id": method, "status": "success", "error": None, "created_at": "2026-12-02",
        "experiment": {"method": method}, "params": {"trainable_pct": 1.0},
        "env": {**env, **({"gpu": gpu} if gpu else {})}, "code": {"git_sha": "abc"},
        "cost": {"step_time_s": {"p50": 0.5, "n": 15}, "tokens_per_s": 32768.0, **cost},
    }  # fmt: skip


def test_the_cost_table_reads_flat_and_per_phase_keys_and_never_invents_a_number(tmp_path):
    flat = _record("full", {"flops_per_token": 4e9, "mfu": 0.31,
                            "peak_mem_bytes": {"allocated": 2**31, "reserved": 2**32}})  # fmt: skip
    phased = _record("lora", {
        "flops_per_token": {"measured": 3e9, "analytic": 2.5e9}, "mfu": {"measured": 0.45},
        "peak_mem_bytes": {"setup": {"allocated": 2**30, "reserved": 2**30},
                           "train": {"allocated": 3 * 2**30, "reserved": 4 * 2**30},
                           "eval": {"allocated": 2**30, "reserved": 4 * 2**30}},
    })  # fmt: skip
    bare = _record("ia3", {})
    (tmp_path / "records").mkdir()
    for r in (flat, phased, bare):
        (tmp_path / "records" / f"{r['run_id']}.json").write_text(json.dumps(r))
    ratios = {"step_p50_s": 1.02, "wall_per_step_s": 1.04, "peak_rss_bytes": 1.0}
    (tmp_path / "overhead.json").write_text(
        json.dumps({"ratios": ratios, "steps": 20, "repeats": 2})
    )
    text, data = cost_table.render(tmp_path, command="scripts/gpu_check.sh")
    rows = {r["method"]: r for r in data["rows"]}
    assert (rows["full"]["peak_allocated"], rows["full"]["peak_reserved"]) == (2**31, 2**32)
    assert (rows["lora"]["peak_allocated"], rows["lora"]["peak_reserved"]) == (3 * 2**30, 4 * 2**30)
    assert rows["lora"]["flops_per_token"] == 3e9 and rows["lora"]["mfu"] == 0.45
    assert rows["ia3"]["mfu"] is None and "| ia3 | success | 1 | 500.0 | 32,768 | n/a |" in text
    assert [r["method"] for r in data["rows"]] == ["full", "lora", "ia3"]  # the table's order
    assert data["goals"] == {"lora_mfu": 0.45, "lora_mfu_met": True,
                             "overhead_step_p50": 1.02, "overhead_met": True}  # fmt: skip
    assert "Device: **NVIDIA H200**" in text and "LoRA MFU >= 40%: met (45.0%)" in text


def test_cpu_figures_are_never_judged_against_the_gpu_goals(tmp_path):
    (tmp_path / "records").mkdir()
    record = _record("lora", {"mfu": None}, gpu=None)
    (tmp_path / "records" / "lora.json").write_text(json.dumps(record))
    (tmp_path / "overhead.json").write_text(json.dumps({"ratios": {"step_p50_s": 0.9}}))
    text, data = cost_table.render(tmp_path)
    assert data["goals"]["overhead_met"] is None and "not judged (no GPU)" in text


def test_performance_doc_is_a_template_that_render_fills_between_its_markers(tmp_path):
    doc = (ROOT / "docs" / "PERFORMANCE.md").read_text()
    assert "No GPU figures exist yet" in doc and "scripts/gpu_check.sh" in doc
    filled = tmp_path / "PERFORMANCE.md"
    filled.write_text(doc)
    cost_table.fill_doc(filled, "| a table |")
    text = filled.read_text()
    assert f"{cost_table.BEGIN}\n| a table |\n{cost_table.END}" in text
    assert "No GPU run yet." not in text and text.startswith("# Performance")
    assert "## On this project's 2-core CPU" in text  # the CPU figures survive a fill
    (tmp_path / "plain.md").write_text("no markers")
    with pytest.raises(SystemExit, match="markers"):
        cost_table.fill_doc(tmp_path / "plain.md", "x")


# -- the comparison with the CPU records ----------------------------------------------------
def test_the_sweep_comparison_reads_the_committed_cpu_table_and_flags_disagreement(tmp_path):
    assert {k: sweep_compare.cpu_scores()[k] for k in ("lora", "prefix", "adapter")} == {
        "lora": 75.0, "prefix": 72.5, "adapter": 79.2,
    }  # fmt: skip
    records = tmp_path / "records"
    records.mkdir()
    for method, accuracy in (("lora", 0.76), ("prefix", 0.70)):
        record = {"status": "success", "created_at": "x", "experiment": {"method": method},
                  "metrics": {"test": {"accuracy": accuracy}}, "env": {"gpu": "H200"},
                  "config": {"train": {"precision": "bf16"}}}  # fmt: skip
        (records / f"{method}.json").write_text(json.dumps(record))
    text, status = sweep_compare.compare(records, ["lora", "prefix"])
    assert status == 0 and "| lora | 75.0 | 76.0 | +1.0 | yes |" in text
    text, status = sweep_compare.compare(records, ["lora", "prefix", "adapter"])
    assert status == 2 and "| adapter | 79.2 | missing |" in text
    worse = json.loads((records / "prefix.json").read_text())
    worse["metrics"]["test"]["accuracy"] = 0.60
    (records / "prefix.json").write_text(json.dumps(worse))
    assert sweep_compare.compare(records, ["lora", "prefix"])[1] == 1  # 60.0 vs 72.5


# -- the script -----------------------------------------------------------------------------
def test_the_script_stops_in_one_line_on_a_python_without_the_packages(tmp_path):
    bare = tmp_path / "python"  # the same interpreter without site-packages: no torch
    bare.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    bare.chmod(0o755)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "GPU_CHECK_PYTHON": str(bare)}
    done = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    errors = [line for line in done.stdout.splitlines() if line.startswith("gpu_check: error:")]
    assert len(errors) == 1 and "lacks torch, transformers, peft" in errors[0]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["ok"] is False and summary["steps"] == [
        {"step": "probe", "rc": 3, "seconds": summary["steps"][0]["seconds"], "required": 1}
    ]


def test_the_script_refuses_an_unknown_argument(tmp_path):
    done = subprocess.run([str(SCRIPT), "--fast"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "unknown argument --fast" in done.stderr


@pytest.mark.slow
def test_the_cpu_smoke_run_goes_through_every_step_into_one_folder(tmp_path):
    """The whole script on CPU with tiny models (about 4 minutes on 2 shared cores)."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "GPU_CHECK_PYTHON": sys.executable}
    done = subprocess.run(
        [str(SCRIPT), "--cpu-smoke"], env=env, capture_output=True, text=True, timeout=600
    )
    summary = json.loads((out / "summary.json").read_text())
    assert done.returncode == 0 and summary["ok"], done.stdout[-3000:]
    steps = {s["step"]: s["rc"] for s in summary["steps"]}
    # pytest: the gpu tests are collected and skipped without CUDA (rc 0), or none at all (5)
    assert steps == {"probe": 0, "install": 0, "pytest": 0, "sweep": 0, "compare": 0,
                     "cost": 0, "render": 0}  # fmt: skip
    sweep = [json.loads(p.read_text()) for p in (out / "sweep" / "records").glob("*.json")]
    assert sorted(r["experiment"]["method"] for r in sweep) == ["adapter", "lora", "prefix"]
    assert all(
        r["status"] == "success" and r["config"]["train"]["precision"] == "bf16" for r in sweep
    )
    cost = [json.loads(p.read_text()) for p in (out / "cost" / "records").glob("*.json")]
    assert sorted(r["experiment"]["method"] for r in cost) == sorted(cost_table.METHODS)
    assert all(r["status"] == "success" and r["data"]["synthetic"] for r in cost)
    assert json.loads((out / "cost" / "overhead.json").read_text())["ratios"]["step_p50_s"] > 0
    doc = (out / "PERFORMANCE.md").read_text()
    assert "Device: **cpu**" in doc and "| lora | success |" in doc and "No GPU run yet." not in doc
    for name in ("probe.json", "gpu_check.log", "logs/cost.log", "sweep_compare.md"):
        assert (out / name).is_file()


def test_the_gpu_cost_preset_runs_the_cells_the_cost_table_runs(tmp_path):
    """`python run.py -m +experiment=gpu-cost` and scripts/cost_table.py must measure the same."""
    from pathlib import Path as P

    from peftbench.config.precheck import check_command_line
    from peftbench.measure.overhead import compose

    check_command_line(["-m", "+experiment=gpu-cost"], ROOT / "conf")
    preset = compose(["+experiment=gpu-cost", "method=lora"])
    args = cost_table.main.__globals__["argparse"].Namespace(
        tokenizer=None, tiny=False, device="auto", precision="bf16", batch_size=16, steps=20,
        warmup=5,
    )  # fmt: skip
    table = compose(cost_table.overrides(args, "lora", P(tmp_path)))
    keys = ("precision", "batch_size", "max_steps", "eval_every_steps", "eval_batch_size",
            "warmup_steps_excluded", "checkpoint_every_steps")  # fmt: skip
    assert {k: preset.train[k] for k in keys} == {k: table.train[k] for k in keys}
    assert (preset.task.name, preset.model.name) == (table.task.name, table.model.name)
    assert preset.instrument.inference is table.instrument.inference is False
    sweep = OmegaConf.load(ROOT / "conf" / "experiment" / "gpu-cost.yaml").hydra.sweeper.params
    assert sweep.method.split(",") == list(cost_table.METHODS)


def test_carried_wheels_travel_in_the_manifest(tmp_path):
    wheels = tmp_path / "dl"
    wheels.mkdir()
    (wheels / "pkg-1.0-py3-none-any.whl").write_bytes(b"PK fake wheel")
    manifest = carry.build(tmp_path / "carry", tiny=True, wheels_from=wheels)
    assert "wheels/pkg-1.0-py3-none-any.whl" in manifest["files"]
    assert manifest["from"]["wheels"] == ["pkg-1.0-py3-none-any.whl"]
    with pytest.raises(carry.CarryError, match="no .whl"):
        carry.build(tmp_path / "carry2", tiny=True, wheels_from=tmp_path / "carry" / "data")
