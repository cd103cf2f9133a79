"""Every cost as the hardware measures it (issue 17): counted FLOPs, memory per phase, set-up
apart from training, and ``peftbench costs methods``."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import peftbench.methods.selective
import peftbench.runner.train
from analysis import clean_costs
from peftbench.cli import main
from peftbench.measure import costs, overhead
from peftbench.measure.instrument import (
    _extra_flop_formulas,
    count_step_flops,
    forward_params,
    rss_peak_resettable,
    training_flops_per_token,
)
from peftbench.runner import experiment
from tests.conftest import tiny_overrides

CPU = torch.device("cpu")
MB = 2**20


def _run(cfg) -> dict:
    summary = experiment.run(cfg)
    assert summary["status"] == "success"
    return json.loads(Path(summary["path"]).read_text())


def _built(compose, method: str):
    model, loader, dtype = overhead._build(compose(f"method={method}"), CPU)
    return model, next(iter(loader))


def test_inverse_ffts_are_counted():
    spectrum = torch.randn(32, 64, dtype=torch.complex64)
    counter = FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas())
    with counter:
        torch.fft.ifft2(spectrum)
    # torch's own counter has no FFT formula: FourierFT's Delta W would count 0
    assert counter.get_total_flops() == round(5 * 32 * 64 * math.log2(32 * 64))


def test_counted_flops_skip_embedding_lookups():
    """Full fine-tuning: 6 FLOPs per non-embedding weight per token (+ attention), where the
    formula charged 2 more per embedding weight (its tables 'trained' as if they multiplied)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=4000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=64,
        )
    )  # fmt: skip
    batch = {
        "input_ids": torch.randint(0, 4000, (4, 8)),
        "attention_mask": torch.ones(4, 8, dtype=torch.long),
        "labels": torch.tensor([0, 1, 0, 1]),
    }
    counted = count_step_flops(model, batch, CPU)["flops_per_token"]
    six_n = 6 * forward_params(model)
    analytic = training_flops_per_token(
        forward_params(model), sum(p.numel() for p in model.parameters())
    )
    assert six_n * 0.95 <= counted <= six_n * 1.15  # attention's sequence term on top
    assert analytic > 3 * six_n  # the old figure: 128k embedding weights "trained"


def test_vera_counts_its_frozen_random_matrices(compose):
    vera, vera_batch = _built(compose, "vera")
    lora, lora_batch = _built(compose, "lora")
    vera_flops = count_step_flops(vera, vera_batch, CPU)["flops_per_token"]
    lora_flops = count_step_flops(lora, lora_batch, CPU)["flops_per_token"]
    # rank-1024 random matrices (buffers, no parameters) multiply every adapted layer's input
    assert vera_flops > 3 * lora_flops
    analytic = [
        training_flops_per_token(
            forward_params(m), sum(p.numel() for p in m.parameters() if p.requires_grad)
        )
        for m in (vera, lora)
    ]
    # what the formula saw: VeRA about LoRA (a 40-step MiniLM run: 0.99x)
    assert vera_flops / lora_flops > 3 * analytic[0] / analytic[1]


def test_fourierft_counts_its_dense_delta_and_ffts(compose):
    model, batch = _built(compose, "fourierft")
    counted = count_step_flops(model, batch, CPU)
    assert counted["by_op"]["_fft_c2c"] > 0  # forward ifft2 and its backward


def test_counting_leaves_rng_and_gradients_alone(compose):
    model, batch = _built(compose, "lora")
    state = torch.random.get_rng_state()
    count_step_flops(model, batch, CPU)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(p.grad is None for p in model.parameters())


def test_counting_does_not_perturb_training_and_the_record_says_if_fresh(
    compose, tmp_path, monkeypatch
):
    """The same run with and without the counted step: identical losses and dev scores."""
    monkeypatch.setattr(costs, "_RUNS_IN_PROCESS", 0)
    real_count = costs.count_step_flops
    stub = {"flops": 1, "tokens": 1, "flops_per_token": 1.0, "by_op": {}}
    monkeypatch.setattr(costs, "count_step_flops", lambda *a, **k: dict(stub))
    plain = _run(compose("method=lora", results_dir=tmp_path / "plain"))
    monkeypatch.setattr(costs, "count_step_flops", real_count)
    counted = _run(compose("method=lora", results_dir=tmp_path / "counted"))

    def trace(record: dict) -> list:
        return [
            (row["step"], row.get("train/loss"), row.get("dev/accuracy"))
            for row in record["history"]
        ]

    assert trace(counted) == trace(plain)  # bit-identical: dropout drew the same masks
    assert counted["metrics"]["test"] == plain["metrics"]["test"]
    cost = counted["cost"]
    assert cost["flops_counted"]["flops"] > 0 and cost["flops_counted"]["by_op"]["mm"] > 0
    assert cost["flops_per_token"] == pytest.approx(
        cost["flops_counted"]["flops"] / cost["flops_counted"]["tokens"]
    )
    assert cost["flops_per_token_analytic"] > 0
    assert cost["mfu"] > 0 and cost["peak"]["mfu_uses"] == "measured"  # CPU: measured peak
    assert plain["cost"]["peak_mem_bytes"]["fresh_process"] is True
    assert cost["peak_mem_bytes"]["fresh_process"] is False


@pytest.mark.skipif(not rss_peak_resettable(), reason="the RSS high-water mark cannot be reset")
def test_setup_and_evaluation_memory_and_calibration_time_are_kept_apart(
    compose, tmp_path, monkeypatch
):
    """fisher_mask's Fisher pass and the batch-128 evaluations no longer set the training
    peak, and the Fisher pass's time is set-up time, not training time."""
    real_fisher = peftbench.methods.selective.empirical_fisher
    real_evaluate = peftbench.runner.train.evaluate

    def hungry(real):
        def wrapper(*args, **kwargs):
            ballast = bytearray(600 * MB)  # touched pages count towards the resident set
            del ballast
            return real(*args, **kwargs)

        return wrapper

    def slow_hungry_fisher(*args, **kwargs):
        time.sleep(1.5)
        return hungry(real_fisher)(*args, **kwargs)

    monkeypatch.setattr(peftbench.methods.selective, "empirical_fisher", slow_hungry_fisher)
    monkeypatch.setattr(peftbench.runner.train, "evaluate", hungry(real_evaluate))
    record = _run(compose("method=fisher_mask", results_dir=tmp_path))
    peaks = record["cost"]["peak_mem_bytes"]
    assert peaks["rss_resettable"] is True
    assert peaks["setup"]["rss"] >= peaks["train"]["rss"] + 400 * MB
    assert peaks["eval"]["rss"] >= peaks["train"]["rss"] + 400 * MB
    assert peaks["rss"] == peaks["train"]["rss"]  # the top level (the tables') is training's
    rows = [r["train/peak_rss_bytes"] for r in record["history"] if "train/peak_rss_bytes" in r]
    assert max(rows) <= peaks["train"]["rss"]
    cost = record["cost"]
    assert cost["setup_parts_s"]["method_s"] >= 1.5  # calibration: set-up
    assert cost["setup_time_s"] >= sum(cost["setup_parts_s"].values()) - 1e-6


def test_bench_methods_prints_ratios_to_full_and_lora(tiny_bert_dir, tmp_path, capsys):
    overrides = [
        o
        for o in tiny_overrides(tiny_bert_dir, tmp_path)
        if not o.startswith(("results_dir=", "train.max_steps=", "train.eval_every_steps="))
    ]
    result = overhead.methods_bench(
        [*overrides, "fisher_mask:method.calibration_examples=8"],
        methods=["vera"],
        steps=1,
        repeats=1,
    )
    assert set(result["medians"]) == {"full", "lora", "vera"}  # the references always run
    medians = result["medians"]
    assert medians["vera"]["flops_per_token"] > 3 * medians["lora"]["flops_per_token"]
    for row in medians.values():
        assert row["step_p50_s"] > 0 and row["train_peak_bytes"] > 0 and row["forward_p50_s"] > 0
    # served merged where the method folds into the weights (lora.yaml, vera.yaml: mergeable)
    assert medians["full"]["forward_merged_p50_s"] is None
    assert (
        medians["lora"]["forward_merged_p50_s"] > 0 and medians["vera"]["forward_merged_p50_s"] > 0
    )
    # the machine's pace, measured in the same run: the MFU's denominator and the unit that
    # makes step times from files of other days comparable
    (pace,) = result["matmul_tflops_by_round"]
    assert pace > 0
    for row in medians.values():
        assert row["mfu"] == pytest.approx(row["achieved_flops_per_s"] / (pace * 1e12))
    text = overhead.format_methods(result)
    assert "÷ full" in text and "÷ lora" in text and "| vera |" in text
    assert f"matmul rate measured after each round ({1e3 * pace:,.0f} GFLOP/s" in text
    assert "| full | " in text and " | 1.00 | " in text
    progress = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[costs]")]
    assert len(progress) == 3  # a line per measurement; the error below is then the only one
    assert main(["costs", "methods", "--methods", "nosuch", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("peftbench: error: unknown method nosuch;")

    # --out: the JSON the report reads (analysis.clean_costs) and the table beside it
    assert (result["task"], result["model"]) == ("polarity", "tiny-bert")
    path = tmp_path / "costs" / "polarity.json"
    assert overhead.write_methods(result, path) == [path, path.with_suffix(".md")]
    clean = clean_costs.load([path]).set_index("method")
    assert set(clean.index) == {"full", "lora", "vera"}
    assert clean.loc["vera", "step_ms_clean"] == pytest.approx(1e3 * medians["vera"]["step_p50_s"])
    assert clean.loc["vera", "train_mem_clean_bytes"] == medians["vera"]["train_rise_bytes"]
    assert clean.loc["vera", "forward_ms_clean"] == 1e3 * medians["vera"]["forward_merged_p50_s"]
    assert clean.loc["full", "forward_ms_clean"] == 1e3 * medians["full"]["forward_p50_s"]
    assert "| vera |" in path.with_suffix(".md").read_text()
    assert main(["costs", "methods", "--out", str(tmp_path / "costs.txt"), *overrides]) == 2
    assert "give a .json file" in capsys.readouterr().err


def test_the_attention_kernels_are_timed_on_the_same_run_and_compared(
    tiny_bert_dir, tmp_path, capsys, monkeypatch
):
    overrides = [
        o
        for o in tiny_overrides(tiny_bert_dir, tmp_path)
        if not o.startswith(("results_dir=", "train.max_steps=", "train.eval_every_steps="))
    ]
    built = []  # the kernel each measured model was built with, in measuring order
    measure = overhead._bench_one

    def spy(cfg, device, steps):
        built.append(cfg.model.attn_implementation)
        return measure(cfg, device, steps)

    monkeypatch.setattr(overhead, "_bench_one", spy)
    result = overhead.kernels_bench([*overrides, "method=lora"], steps=1, repeats=2)
    assert built == ["sdpa", "eager", "eager", "sdpa"]  # interleaved, the second round reversed
    assert set(result["medians"]) == {"sdpa", "eager"} and result["reference"] == "sdpa"
    assert all(row["step_p50_s"] > 0 and row["forward_p50_s"] > 0
               for row in result["medians"].values())  # fmt: skip
    assert (result["model"], result["method"], result["task"]) == ("tiny-bert", "lora", "polarity")
    table = overhead.format_kernels(result)
    assert "| sdpa | " in table and " | 1.00 | " in table and "| eager | " in table
    progress = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[costs]")]
    assert len(progress) == 4
    assert main(["costs", "attention", "--kernels", "sdpa,flash", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and "model.attn_implementation must be one of eager, sdpa" in err[0]
    assert main(["costs", "attention", "--kernels", "eager", *overrides]) == 2
    assert "needs two or more" in capsys.readouterr().err


def test_a_clean_cost_run_measures_each_method_in_its_own_process(
    tiny_bert_dir, tmp_path, monkeypatch, capsys
):
    """--fresh-process: every method of every round is built, trained and measured in a new
    process (none inherits another's freed heap), and the result says so."""
    overrides = [
        o
        for o in tiny_overrides(tiny_bert_dir, tmp_path)
        if not o.startswith(("results_dir=", "train.max_steps=", "train.eval_every_steps="))
    ]
    pids, real = [], overhead._bench_fresh

    def spy(*args):
        result = real(*args)
        pids.append(result["pid"])
        return result

    monkeypatch.setattr(overhead, "_bench_fresh", spy)
    result = overhead.methods_bench(
        [*overrides, "train.threads=1"], methods=["lora"], steps=1, repeats=2,
        fresh_process=True,
    )  # fmt: skip
    assert len(pids) == 4 and len(set(pids)) == 4 and os.getpid() not in pids
    assert set(result["medians"]) == {"full", "lora"} and not result["errors"]
    assert result["medians"]["lora"]["train_rise_bytes"] > 0
    assert result["threads"] == 1  # the children's, as train.threads set it there
    assert len(result["matmul_tflops_by_round"]) == 2  # the pace after each round
    assert "a fresh process per method and round" in overhead.format_methods(result)
    progress = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[costs]")]
    assert [ln.split(":")[0] for ln in progress] == [  # odd rounds run in reverse order
        "[costs] 1/4 round 1/2 full",
        "[costs] 2/4 round 1/2 lora",
        "[costs] 3/4 round 2/2 lora",
        "[costs] 4/4 round 2/2 full",
    ]
    assert all(" ms a step (" in ln for ln in progress)


def test_bench_scoped_overrides_reach_only_their_method():
    given = ["train.batch_size=8", "fisher_mask:method.calibration_examples=8"]
    assert overhead._split_overrides(given, "fisher_mask") == [
        "train.batch_size=8",
        "method.calibration_examples=8",
    ]
    assert overhead._split_overrides(given, "lora") == ["train.batch_size=8"]


def test_a_record_says_where_its_wall_time_went(compose, tmp_path, monkeypatch):
    """Every stage of a run is timed, in order, and together they are the run's wall time:
    a slow forgetting probe shows up as its own part, not as training or an unknown rest."""
    from peftbench.measure.forgetting import ForgettingProbe

    real_result = ForgettingProbe.result

    def slow_result(self, model):
        time.sleep(1.0)
        return real_result(self, model)

    monkeypatch.setattr(ForgettingProbe, "result", slow_result)
    cost = _run(compose("method=lora", "instrument.forgetting=true", results_dir=tmp_path))["cost"]
    parts = cost["wall_parts_s"]
    assert list(parts) == [
        "startup_s", "setup_s", "train_s", "dev_eval_s", "loop_other_s", "test_s",
        "flop_count_s", "artifact_s", "forgetting_s", "inference_s", "predictions_s",
    ]  # fmt: skip
    assert parts["forgetting_s"] >= 1.0
    assert parts["train_s"] == cost["train_time_s"] and parts["train_s"] > 0
    assert parts["dev_eval_s"] + parts["test_s"] >= cost["eval_time_s"] - 1e-6
    timed = sum(v for k, v in parts.items() if k != "startup_s")
    assert timed == pytest.approx(cost["wall_s"], abs=1e-3)
    assert cost["wall_s"] >= cost["train_time_s"] + parts["forgetting_s"]


def test_a_resumed_runs_wall_time_counts_its_loop_before_the_stop():
    """A run stopped and resumed trains in two processes: its wall time is both loops' (the
    parts already hold the whole loop's training and evaluation), not the last process's."""
    clock = SimpleNamespace(parts={"setup_s": 2.0, "fit_s": 5.0, "test_s": 1.0}, total=lambda: 8.0)
    result = peftbench.runner.train.TrainResult(10, 10, {}, train_s=7.0, resumed_s=4.0)
    wall, parts = experiment._wall(clock, result, dev_eval_s=1.0, startup=None)
    assert wall == 12.0  # 8 s in this process, 4 s of loop before the stop
    assert parts["train_s"] == 7.0 and parts["loop_other_s"] == 1.0  # 5 + 4 - 7 - 1
    assert sum(v for k, v in parts.items() if k != "startup_s") == pytest.approx(wall)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads Linux's /proc")
def test_freed_heap_goes_back_to_the_os_before_a_method_is_measured():
    """glibc keeps freed blocks resident: without the trim, a method built after a bigger one
    reuses them and its RSS rise hides its memory (every method showed one model's ~81 MB)."""
    if "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or ""):
        pytest.skip("malloc_trim is glibc's")

    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    blocks = [bytearray(64 * 1024) for _ in range(3000)]  # ~197 MB, each below mmap's threshold
    top = bytearray(64 * 1024)  # allocated after them: the heap's top stays in use
    before = rss()
    del blocks
    assert rss() > before - 50e6  # freed, yet still resident
    overhead._release_freed_memory()
    assert rss() < before - 150e6
    del top
