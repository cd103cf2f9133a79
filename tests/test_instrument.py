"""The shared instrumentation measures what it claims to."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

import peftbench.train
from peftbench import experiment
from peftbench.instrument import PeakMemory, StepTimer, peak_tflops, training_flops_per_token

real_evaluate = peftbench.train.evaluate


def _run(compose, *overrides: str, results_dir: Path) -> dict:
    summary = experiment.run(compose(*overrides, results_dir=results_dir))
    assert summary["status"] == "success"
    return json.loads(Path(summary["path"]).read_text())


def test_reported_trainable_count_equals_a_direct_count(compose, tmp_path):
    from peftbench.methods import MethodContext, apply_method
    from peftbench.models import load_backbone
    from tasks import build_task

    cfg = compose("method=adapter")
    record = _run(compose, "method=adapter", results_dir=tmp_path)
    task = build_task(cfg.task)
    backbone = load_backbone(cfg.model, task)
    context = MethodContext(
        head_modules=backbone.head_modules, peft_task_type=task.peft_task_type, model_type="bert"
    )
    model = apply_method(backbone.model, cfg.method, context)
    assert record["params"]["trainable"] == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )


def test_training_time_excludes_evaluation(compose, tmp_path, monkeypatch):
    _run(compose, "method=lora", results_dir=tmp_path / "warm-up")  # first-run costs go here
    fast = _run(compose, "method=lora", results_dir=tmp_path / "fast")

    def slow_evaluate(*args, **kwargs):
        time.sleep(1.0)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(peftbench.train, "evaluate", slow_evaluate)
    slow = _run(compose, "method=lora", results_dir=tmp_path / "slow")
    # 2 dev evaluations (inside the training loop) + 1 test evaluation, each 1 s slower
    assert slow["cost"]["eval_time_s"] >= 3.0
    assert slow["cost"]["train_time_s"] < fast["cost"]["train_time_s"] + 1.0


def test_memory_high_water_is_reset_between_runs_in_one_process(compose, tmp_path, monkeypatch):
    def hungry_evaluate(*args, **kwargs):
        ballast = bytearray(600 * 2**20)  # touched pages count towards the resident set
        del ballast
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(peftbench.train, "evaluate", hungry_evaluate)
    first = _run(compose, "method=lora", results_dir=tmp_path / "a")
    monkeypatch.setattr(peftbench.train, "evaluate", real_evaluate)
    second = _run(compose, "method=lora", results_dir=tmp_path / "b")
    peak_first = first["cost"]["peak_mem_bytes"]["rss"]
    peak_second = second["cost"]["peak_mem_bytes"]["rss"]
    assert peak_second < peak_first - 400 * 2**20


def test_peak_memory_reads_the_high_water_mark():
    memory = PeakMemory(torch.device("cpu"))
    memory.reset()
    before = memory.read()["rss"]
    ballast = bytearray(300 * 2**20)
    assert memory.read()["rss"] >= before + 290 * 2**20
    del ballast


def test_step_timer_keeps_warmup_apart_and_counts_real_tokens():
    timer = StepTimer(warmup=2, device=torch.device("cpu"))
    batch = {
        "input_ids": torch.zeros(2, 5),
        "attention_mask": torch.tensor([[1] * 5, [1, 1, 0, 0, 0]]),
    }
    for _ in range(5):
        with timer.step(batch):
            pass
    summary = timer.summary()
    assert summary["step_time_s"]["n"] == 3 and summary["step_time_s"]["warmup_n"] == 2
    assert timer.tokens == 3 * 7 and timer.padded_tokens == 3 * 10
    assert timer.padded_tokens_all == 5 * 10


def test_flops_count_only_trainable_weights_for_weight_gradients():
    n = 1_000_000
    assert training_flops_per_token(n, n) == 6 * n  # full fine-tuning: the classic 6N
    assert training_flops_per_token(n, 0) == 4 * n  # frozen weights need no weight gradient


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA A100-SXM4-40GB", 312.0),
        ("cpu", None),
    ],
)
def test_peak_table_matches_device_names(name, peak):
    assert peak_tflops(name) == peak
    assert peak_tflops(name, override=100.0) == 100.0
