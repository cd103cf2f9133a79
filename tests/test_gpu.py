"""Checks that need a CUDA device (``pytest -m gpu``; skipped without one).

``scripts/gpu_check.sh`` runs them first on the GPU machine: the harness's CUDA paths (bf16
autocast, CUDA peak memory, MFU, the idle check between runs of one process) on tiny models,
before the long runs that depend on them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from peftbench.measure.instrument import peak_tflops
from scripts.cost_table import TINY, peak_memory

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _run(cfg) -> dict:
    from peftbench.runner.experiment import run

    summary = run(cfg)
    record = json.loads(Path(summary["path"]).read_text())
    assert record["status"] == "success", record["error"]
    return record


def test_a_run_on_cuda_trains_under_bf16_autocast_and_records_cuda_memory(compose, monkeypatch):
    import peftbench.methods as methods

    seen: list[bool] = []
    apply = methods.apply_method

    def spying_apply(*args, **kwargs):
        model = apply(*args, **kwargs)
        model.register_forward_pre_hook(lambda *_: seen.append(torch.is_autocast_enabled("cuda")))
        return model

    monkeypatch.setattr(methods, "apply_method", spying_apply)
    # inference timing (after training) runs without autocast: left out of this check
    record = _run(
        compose("method=lora", "device=cuda", "train.precision=auto", "instrument.inference=false")
    )
    assert seen and all(seen)  # auto = bf16 autocast on CUDA, every training and eval forward
    assert record["env"]["gpu"] == torch.cuda.get_device_name(0)
    allocated, reserved = peak_memory(record["cost"])
    assert allocated and allocated > 0 and reserved >= allocated
    mfu = record["cost"]["mfu"]
    mfu = mfu.get("measured", mfu.get("total")) if isinstance(mfu, dict) else mfu
    if peak_tflops(record["env"]["gpu"]) is not None:  # H100, H200, A100, L4, L40S
        assert mfu is not None and 0 < mfu < 1
    else:
        assert mfu is None


def test_runs_of_one_process_leave_the_gpu_idle_for_the_next(compose):
    """Hydra's basic launcher runs a sweep in one process: a run must free what it held,
    or the next is refused (``ensure_idle``) and the cost table loses its cells."""
    from peftbench.measure.instrument import ensure_idle

    _run(compose("method=lora", "device=cuda"))
    ensure_idle(torch.device("cuda"))  # raises AcceleratorBusy if the run left tensors behind
    assert torch.cuda.memory_allocated() == 0
    _run(compose("method=adapter", "device=cuda"))


def test_the_synthetic_task_trains_a_tiny_llama_on_cuda_in_bf16(tiny_bert_dir, tmp_path):
    from peftbench.measure.overhead import compose

    cfg = compose(
        [
            "task=synthetic-1024",
            "model=llama-1b-synthetic",
            "method=lora",
            "model.source.asset=null",
            "model.source.gguf_file=null",
            f"model.source.path={tiny_bert_dir}",  # the tokenizer only (its pad token)
            *TINY,
            "device=cuda",
            "train.precision=bf16",
            "train.batch_size=4",
            "train.max_steps=6",
            "train.eval_every_steps=6",
            "train.eval_batch_size=4",
            "train.warmup_steps_excluded=2",
            "tracker=none",
            "data_cache=false",
            f"results_dir={tmp_path}",
        ]
    )
    record = _run(cfg)
    assert record["data"]["synthetic"] is True
    assert record["cost"]["tokens_per_s"] == pytest.approx(record["cost"]["padded_tokens_per_s"])
    assert record["cost"]["peak_mem_bytes"] is not None
