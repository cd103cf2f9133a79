"""The overhead benchmark runs both sides on the same work (its figures go in issue notes)."""

from __future__ import annotations

import math

from peftbench.bench import format_overhead, overhead
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
