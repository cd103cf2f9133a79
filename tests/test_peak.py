"""The measured matmul peak (MFU's denominator on CPU): measured once, cached, used by records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from peftbench.cli import main
from peftbench.measure import peak as peak_module
from peftbench.runner import experiment

CPU = torch.device("cpu")


@pytest.fixture
def quick(monkeypatch):
    """Small sizes and a short clock: the arithmetic, not the machine, is under test."""
    monkeypatch.setattr(peak_module, "SIZES", (32, 64))
    monkeypatch.setattr(peak_module, "MIN_SECONDS", 0.01)


def test_a_measurement_is_the_best_size_and_cached_until_remeasured(quick, tmp_path, monkeypatch):
    first = peak_module.peak("fp32", 1, CPU, cache_dir=tmp_path)
    assert first["tflops"] == max(first["by_size_tflops"].values()) > 0
    assert first["best_size"] in (32, 64) and first["dtype"] == "fp32" and first["threads"] == 1
    calls = []
    monkeypatch.setattr(peak_module, "measure", lambda *a: calls.append(a) or {"tflops": 1.0})
    assert peak_module.peak("fp32", 1, CPU, cache_dir=tmp_path) == first  # read, not measured
    assert peak_module.peak("fp32", 2, CPU, cache_dir=tmp_path) == {"tflops": 1.0}  # other key
    assert peak_module.peak("fp32", 1, CPU, cache_dir=tmp_path, remeasure=True)["tflops"] == 1.0
    assert len(calls) == 2


def test_a_damaged_cache_entry_is_measured_again(quick, tmp_path):
    peak_module.peak("fp32", 1, CPU, cache_dir=tmp_path)
    (entry,) = (tmp_path / "peak").glob("*.json")
    entry.write_text("{not json")
    assert peak_module.peak("fp32", 1, CPU, cache_dir=tmp_path)["tflops"] > 0
    assert json.loads(entry.read_text())["source"] == "measured"


def test_the_rate_counts_two_flops_per_multiply_add(monkeypatch):
    clock = iter([0.0, 0.0, 1.0, 1.0])  # start; the loop's check; the final reading
    monkeypatch.setattr(peak_module, "MIN_SECONDS", 0.5)
    monkeypatch.setattr(peak_module.time, "perf_counter", lambda: next(clock, 1.0))
    monkeypatch.setattr(peak_module.torch, "mm", lambda a, b: None)
    # 3 calls at least, then the clock reads 1 s: 3 x 2 x 10^3 FLOPs in 1 s
    assert peak_module._rate(10, torch.float32, CPU) == pytest.approx(3 * 2 * 10**3)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_cpu_record_carries_mfu_against_the_measured_peak(
    quick, compose, tmp_path, monkeypatch, precision
):
    """Against the peak of the dtype the run computed in (bf16 autocast: bf16's peak)."""
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))
    cfg = compose("method=lora", f"train.precision={precision}", results_dir=tmp_path / "r")
    summary = experiment.run(cfg)
    cost = json.loads(Path(summary["path"]).read_text())["cost"]
    measured = cost["peak"]["measured"]
    assert measured["dtype"] == precision and measured["threads"] == torch.get_num_threads()
    assert cost["peak"]["mfu_uses"] == "measured" and cost["peak"]["datasheet_tflops"] is None
    assert cost["mfu"] == pytest.approx(cost["achieved_tflops"] / measured["tflops"])
    assert cost["mfu_measured"] == cost["mfu"]
    env = json.loads(Path(summary["path"]).read_text())["env"]
    assert env["cpu"] == peak_module.cpu_identity()  # the host, as far as the VM shows it


def test_the_cpu_identity_names_family_model_and_matmul_flags(tmp_path):
    """A VM's model name can hide the generation ("AMD EPYC"): family and model do not."""
    core = ("processor\t: {n}\nmodel name\t: AMD EPYC\ncpu family\t: 25\nmodel\t\t: 17\n"
            "stepping\t: 1\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512vl\n")  # fmt: skip
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(core.format(n=0) + "\n" + core.format(n=1))
    assert peak_module.cpu_identity(cpuinfo) == {
        "name": "AMD EPYC", "family": "25", "model": "17", "stepping": "1",
        "flags": ["avx2", "avx512f", "avx512_bf16"],  # no AMX here; not every flag listed
    }  # fmt: skip
    assert peak_module.cpu_identity(tmp_path / "absent") is None  # not Linux: nothing to say


def test_the_peak_command_prints_a_table_and_refuses_bad_ones(quick, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path))
    assert main(["costs", "peak", "--dtypes", "fp32", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| fp32 | 1 |" in out and "peak GFLOP/s" in out
    assert main(["costs", "peak", "--dtypes", "fp64"]) == 2
    assert "unknown dtype fp64" in capsys.readouterr().err
    assert main(["costs", "peak", "--threads", "0"]) == 2
    assert main(["costs", "peak", "--threads", "two"]) == 2
