"""The shared instrumentation measures what it claims to."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import peftbench.runner.train
from peftbench.measure import instrument
from peftbench.measure.instrument import (
    PeakMemory,
    StepTimer,
    peak_tflops,
    training_flops_per_token,
)
from peftbench.runner import experiment

real_evaluate = peftbench.runner.train.evaluate
SLOW_EVAL_S = 2.0  # injected into every evaluation


def _run(compose, *overrides: str, results_dir: Path) -> dict:
    summary = experiment.run(compose(*overrides, results_dir=results_dir))
    assert summary["status"] == "success"
    return json.loads(Path(summary["path"]).read_text())


def test_reported_trainable_count_equals_a_direct_count(compose, tmp_path):
    from peftbench.methods import MethodContext, apply_method
    from peftbench.models.backbones import load_backbone
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
        time.sleep(SLOW_EVAL_S)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(peftbench.runner.train, "evaluate", slow_evaluate)
    slow = _run(compose, "method=lora", results_dir=tmp_path / "slow")
    # 2 dev evaluations (inside the training loop) + 1 test evaluation, each 2 s slower;
    # counted as training they would add 4 s: the margin absorbs a loaded machine's noise
    assert slow["cost"]["eval_time_s"] >= 3 * SLOW_EVAL_S
    assert slow["cost"]["train_time_s"] < fast["cost"]["train_time_s"] + SLOW_EVAL_S
    # history rows carry training seconds too: the last dev row saw both slow evaluations
    last_dev = [row for row in slow["history"] if "dev/accuracy" in row][-1]
    assert last_dev["elapsed_s"] - last_dev["train_s"] >= 2 * SLOW_EVAL_S
    assert last_dev["train_s"] < fast["cost"]["train_time_s"] + SLOW_EVAL_S


def test_memory_high_water_is_reset_between_runs_in_one_process(compose, tmp_path, monkeypatch):
    def hungry_evaluate(*args, **kwargs):
        ballast = bytearray(600 * 2**20)  # touched pages count towards the resident set
        del ballast
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(peftbench.runner.train, "evaluate", hungry_evaluate)
    first = _run(compose, "method=lora", results_dir=tmp_path / "a")
    monkeypatch.setattr(peftbench.runner.train, "evaluate", real_evaluate)
    second = _run(compose, "method=lora", results_dir=tmp_path / "b")
    # the ballast is evaluation's: its phase holds it (the top level is training's peak)
    peak_first = first["cost"]["peak_mem_bytes"]["eval"]["rss"]
    peak_second = second["cost"]["peak_mem_bytes"]["eval"]["rss"]
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


# ------------------------------------------------------------- accelerator idle check, NVML

MiB = 2**20
CUDA = torch.device("cuda")


@pytest.fixture
def fake_cuda(monkeypatch):
    """A CUDA device on a CPU machine: ``held["bytes"]`` is what torch reports allocated."""
    held = {"bytes": 0}
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: held["bytes"])
    monkeypatch.setattr(torch._C, "_cuda_clearCublasWorkspaces", lambda: None, raising=False)
    monkeypatch.setattr(instrument, "nvml_process_bytes", lambda device: 1500 * MiB)
    return held


def test_a_run_starting_on_a_device_that_holds_tensors_is_refused(fake_cuda):
    fake_cuda["bytes"] = 300 * MiB  # e.g. the previous job's model, still referenced
    with pytest.raises(instrument.AcceleratorBusy) as refused:
        instrument.ensure_idle(CUDA)
    message = str(refused.value)
    assert "\n" not in message
    assert "300.0 MiB" in message and "1500 MiB" in message  # torch's count and the driver's
    assert "hydra/launcher=local" in message  # the fix
    fake_cuda["bytes"] = 0
    instrument.ensure_idle(CUDA)  # an idle device passes
    instrument.ensure_idle(torch.device("cpu"))  # nothing to check on a CPU


def test_the_refused_run_leaves_a_one_line_failed_record(compose, tmp_path, monkeypatch, fake_cuda):
    fake_cuda["bytes"] = 64 * MiB
    monkeypatch.setattr(experiment, "ensure_idle", lambda device: instrument.ensure_idle(CUDA))
    summary = experiment.run(compose("method=lora", results_dir=tmp_path))
    record = json.loads(Path(summary["path"]).read_text())
    assert record["status"] == "failed" and "64.0 MiB" in record["error"]
    assert record["traceback"] is None  # a refusal, not a bug


class _FakeNvml:
    """pynvml's calls that nvml_process_bytes makes, with one process: this one."""

    def __init__(self, pid: int, used: int | None) -> None:
        self.process = SimpleNamespace(pid=pid, usedGpuMemory=used)

    def nvmlInit(self):  # noqa: N802 (pynvml's names)
        pass

    def nvmlDeviceGetHandleByUUID(self, uuid):  # noqa: N802
        assert uuid == b"GPU-1234"
        return "handle"

    def nvmlDeviceGetComputeRunningProcesses(self, handle):  # noqa: N802
        return [SimpleNamespace(pid=-1, usedGpuMemory=1), self.process]


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (_FakeNvml(os.getpid(), 900 * MiB), 900 * MiB),
        (_FakeNvml(os.getpid(), None), None),  # the driver does not report it
        (_FakeNvml(-2, 900 * MiB), None),  # a container: the driver sees other PIDs
        (None, None),  # nvidia-ml-py not installed: import fails
    ],
)
def test_nvml_process_memory_is_read_or_null(monkeypatch, module, expected):
    monkeypatch.setitem(sys.modules, "pynvml", module)
    props = SimpleNamespace(uuid="1234")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    assert instrument.nvml_process_bytes(CUDA) == expected


def test_nvml_without_a_driver_gives_null(monkeypatch):
    broken = _FakeNvml(os.getpid(), 1)
    broken.nvmlInit = lambda: (_ for _ in ()).throw(RuntimeError("NVML Shared Library Not Found"))
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    assert instrument.nvml_process_bytes(CUDA) is None
