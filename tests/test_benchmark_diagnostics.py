"""The offline benchmark's diagnostics: they read records through analysis/ and still run.

The write-up (docs/benchmarks/offline-2026-12-02/README.md) quotes their output, so the
figures below are the published ones, recomputed from the committed records.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.conftest import ROOT, tiny_overrides

DIAGNOSTICS = ROOT / "docs" / "benchmarks" / "offline-2026-12-02" / "diagnostics"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, DIAGNOSTICS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_tests_recompute_the_published_hedge_figures(capsys):
    _module("paired_tests").main("hedge")
    out = capsys.readouterr().out
    assert "full          79.4 ± 1.2  (80.67, 79.33, 78.33)" in out
    assert "prefix - prompt: +10.2 ± 0.2 (paired p = 0.000, n = 3)" in out
    assert "full - dora: +3.9 ± 0.7 (paired p = 0.010, n = 3)" in out
    assert "ptuning - linear: -2.4 ± 0.8 (paired p = 0.037, n = 3)" in out
    assert "positive in 19 of 21" in out  # hedge's selection bias on dev


def test_adapter_collapse_traces_the_first_steps_of_a_run(tiny_bert_dir: Path, tmp_path, capsys):
    overrides = tiny_overrides(tiny_bert_dir, tmp_path / "results", "task=polarity")
    _module("adapter_collapse").main("adapter", 1, steps=2, overrides=overrides)
    out = capsys.readouterr().out
    assert "step    1  token-spread" in out and "dead-relu" in out
