"""The overhead benchmark runs both sides on the same work (its figures go in issue notes)."""

from __future__ import annotations

import math

from peftbench.measure.overhead import format_overhead, overhead
from tests.conftest import tiny_overrides


def test_overhead_benchmark_runs_both_loops_and_reports_ratios(tiny_bert_dir, tmp_path):
    overrides = [
        o
        for o in tiny_overrides(tiny_bert_dir, tmp_path)
        if not o.startswith(("results_dir=", "train.max_steps=", "train.eval_every_steps="))
    ]
    result = overhead([*overrides, "method=lora"], steps=4, repeats=2)
    assert len(result["runs"]["harness"]) == len(result["runs"]["bare"]) == 2
    for ratio in result["ratios"].values():
        assert math.isfinite(ratio) and ratio > 0
    text = format_overhead(result)
    assert "step_p50_s" in text and "peak_rss_bytes" in text
    assert not list(tmp_path.glob("**/records/*.json"))  # the harness wrote into a temp dir


def test_the_bare_loop_trains_in_the_harness_precision(tiny_bert_dir, tmp_path, monkeypatch):
    """On a GPU the harness trains under bf16 autocast: a bare loop in fp32 would be slower
    and the ratio would flatter the harness. Both sides must compute in the same precision."""
    import torch

    import peftbench.methods as methods
    from peftbench.measure.overhead import bare_run, compose

    seen: list[bool] = []
    apply = methods.apply_method

    def spying_apply(*args, **kwargs):
        model = apply(*args, **kwargs)
        model.register_forward_pre_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
        return model

    monkeypatch.setattr(methods, "apply_method", spying_apply)
    overrides = tiny_overrides(tiny_bert_dir, tmp_path)
    bare_run(compose([*overrides, "method=lora", "train.precision=bf16"]))
    assert seen and all(seen)  # every training and evaluation forward ran under bf16 autocast
    seen.clear()
    bare_run(compose([*overrides, "method=lora", "train.precision=fp32"]))
    assert seen and not any(seen)
