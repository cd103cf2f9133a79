"""``peftbench costs overhead``: what does the harness cost compared with a bare loop?

The same model, method, data and number of steps run (a) through a full peftbench run
(Hydra config, instrumentation, tracker, record) and (b) through a minimal PyTorch + peft
loop followed by the dev and test forward passes that the run evaluates, alternately, several
times in one process, so both see the same machine state. Printed: the ratios (a)/(b) of the
median step time, of the training wall time per step, and of the peak resident memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import torch

from peftbench.config.paths import CONF_DIR
from peftbench.measure.peak import cpu_identity, dtype_name, measure


def compose(overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def harness_run(cfg: Any) -> dict:
    """(a) One full peftbench run; returns the step and memory figures of its record."""
    from peftbench.runner.experiment import run

    record = json.loads(Path(run(cfg)["path"]).read_text())
    if record["status"] != "success":
        raise RuntimeError(f"the harness run failed: {record['error']}")
    cost = record["cost"]
    steps = cost["step_time_s"]["n"] + cost["step_time_s"]["warmup_n"]
    return {
        "step_p50_s": cost["step_time_s"]["p50"],
        "wall_per_step_s": cost["train_time_s"] / steps,
        # the whole run's peak, as the bare loop's reading covers set-up, training and eval
        "peak_rss_bytes": max(
            cost["peak_mem_bytes"][phase]["rss"] for phase in ("setup", "train", "eval")
        ),
    }


def bare_run(cfg: Any) -> dict:
    """(b) The same work in a minimal loop: load, wrap, AdamW + linear schedule, no extras."""
    from peftbench.measure.instrument import PeakMemory
    from peftbench.methods import MethodContext, apply_method
    from peftbench.models.backbones import load_backbone
    from peftbench.runner.device import accelerate, pick_device, seed_everything
    from peftbench.runner.experiment import effective_lr
    from peftbench.runner.loaders import make_loaders
    from peftbench.runner.train import autocast
    from tasks import build_task

    device = pick_device(cfg.device)
    memory = PeakMemory(device)
    memory.reset()
    seed_everything(int(cfg.seed))
    task = build_task(cfg.task)
    backbone = load_backbone(cfg.model, task)
    context = MethodContext(
        head_modules=backbone.head_modules,
        peft_task_type=task.peft_task_type,
        model_type=backbone.model.config.model_type,
    )
    model = apply_method(backbone.model, cfg.method, context).to(device)
    # the harness's precision (bf16 autocast on CUDA by default) and TF32: the same arithmetic
    autocast_dtype = accelerate(model, device, cfg.train)
    loaders, _ = make_loaders(
        task, backbone.tokenizer, cfg.train, seed=int(cfg.seed), cache_dir=None
    )
    steps, warmup = int(cfg.train.max_steps), int(cfg.train.warmup_steps_excluded)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=effective_lr(cfg.method), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / steps)
    model.train()
    durations = []
    start = time.perf_counter()
    for batch in islice(cycle(loaders["train"]), steps):
        step_start = time.perf_counter()
        with autocast(device, autocast_dtype):
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        durations.append(time.perf_counter() - step_start)
    wall = time.perf_counter() - start
    _forward_passes(model, [loaders["dev"], loaders["test"]], device, autocast_dtype)
    return {
        "step_p50_s": statistics.median(durations[warmup:]),
        "wall_per_step_s": wall / steps,
        "peak_rss_bytes": memory.read()["rss"],
    }


@torch.no_grad()
def _forward_passes(
    model: torch.nn.Module, loaders: list, device: torch.device, dtype: torch.dtype | None = None
) -> None:
    """The harness evaluates dev once (at the last step) and test once: the reference does
    the same forward passes, so the memory ratio compares the same work."""
    from peftbench.runner.train import autocast

    model.eval()
    for loader in loaders:
        for batch in loader:
            with autocast(device, dtype):
                model(**{k: v.to(device) for k, v in batch.items()})


def overhead(overrides: list[str], *, steps: int, repeats: int) -> dict:
    """Runs (a) and (b) alternately ``repeats`` times; returns per-run figures and ratios."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(
            [
                *overrides,
                f"train.max_steps={steps}",
                f"train.eval_every_steps={steps}",
                "instrument.inference=false",
                "force=true",
                f"results_dir={tmp}",
            ]
        )
        runs: dict[str, list[dict]] = {"harness": [], "bare": []}
        for i in range(repeats):
            # ABBA order, so warm-up effects of going first or second cancel out
            order = ("harness", "bare") if i % 2 == 0 else ("bare", "harness")
            for kind in order:
                runs[kind].append(harness_run(cfg) if kind == "harness" else bare_run(cfg))

    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[kind])

    keys = ("step_p50_s", "wall_per_step_s", "peak_rss_bytes")
    ratios = {key: median("harness", key) / median("bare", key) for key in keys}
    return {"runs": runs, "ratios": ratios, "steps": steps, "repeats": repeats}


def format_overhead(result: dict) -> str:
    lines = [f"{'':18}{'harness':>12}{'bare':>12}{'ratio':>8}"]
    for key, ratio in result["ratios"].items():
        harness = statistics.median(r[key] for r in result["runs"]["harness"])
        bare = statistics.median(r[key] for r in result["runs"]["bare"])
        scale, unit = (1 / 2**20, "MiB") if key.endswith("bytes") else (1000, "ms")
        lines.append(
            f"{key:18}{harness * scale:>9.1f}{unit:>3}{bare * scale:>9.1f}{unit:>3}{ratio:>8.3f}"
        )
    lines.append(f"({result['repeats']} interleaved repeats of {result['steps']} steps; medians)")
    return "\n".join(lines)


# ``peftbench costs methods``: every method's training-step cost, measured in one process.

METHODS_DIR = CONF_DIR / "method"
REFERENCES = ("full", "lora")


def all_methods() -> list[str]:
    return sorted(p.stem for p in METHODS_DIR.glob("*.yaml"))


def _split_overrides(overrides: list[str], method: str) -> list[str]:
    """The overrides for ``method``: shared ones, and ``<method>:KEY=VALUE`` ones for it only
    (e.g. ``fisher_mask:method.calibration_examples=32``)."""
    chosen = []
    for item in overrides:
        head, sep, rest = item.partition(":")
        if sep and "=" not in head:  # a method-scoped override
            if head == method:
                chosen.append(rest)
        else:
            chosen.append(item)
    return chosen


def _build(cfg: Any, device: torch.device):
    """The run's set-up, as a run builds it (:mod:`peftbench.runner.assembly`)."""
    from peftbench.runner.assembly import assemble
    from peftbench.runner.device import seed_everything
    from tasks import build_task

    seed_everything(int(cfg.seed))
    loaded, adapted = assemble(cfg, build_task(cfg.task), device)
    return adapted.model, loaded.loaders["train"], adapted.autocast_dtype


def _bench_one(cfg: Any, device: torch.device, steps: int) -> dict:
    """Builds one method and trains it ``steps`` steps (the harness's step), measuring them.

    The first step is warm-up (allocations, lazy init) and is not timed. Memory: the training
    phase's peak (``PhasedPeakMemory``, as a record's ``cost.peak_mem_bytes.train``) and, on
    CPU, its rise above what was resident before the method was built (the process's other
    memory is shared by every method and would hide the differences).
    """
    from peftbench.launch import slots
    from peftbench.measure.instrument import PhasedPeakMemory, count_step_flops
    from peftbench.methods.base import merge, step_hook
    from peftbench.runner.experiment import effective_lr
    from peftbench.runner.train import autocast

    threads = slots.torch_threads(cfg.train.get("threads", "auto"))
    if threads is not None:  # as a run sets them (train.threads)
        torch.set_num_threads(threads)
    _release_freed_memory()  # else this method's build reuses what the last one freed
    memory = PhasedPeakMemory(device, "setup")
    resident = memory.raw.read()["rss"] if device.type == "cpu" else None
    start = time.perf_counter()
    model, loader, dtype = _build(cfg, device)
    setup_s = time.perf_counter() - start
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=effective_lr(cfg.method), weight_decay=0.01)
    hook = step_hook(model)
    batches = [
        {k: v.to(device) for k, v in batch.items()} for batch in islice(cycle(loader), steps + 1)
    ]
    counted = count_step_flops(model, batches[0], device, dtype)
    memory.switch("train")
    model.train()
    durations, tokens = [], 0
    for i, batch in enumerate(batches):
        step_start = time.perf_counter()
        with autocast(device, dtype):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if hook is not None:
            hook(i)
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # step 0 is warm-up
            durations.append(time.perf_counter() - step_start)
            tokens += batch["input_ids"].numel()  # padded, as the FLOP count is per token
    train = memory.read("train")
    forward = _forward_p50(model, batches, device, dtype)
    merged = (  # as deployed: a method that folds into the weights costs the backbone's time
        _forward_p50(merge(model, cfg.method), batches, device, dtype)
        if cfg.method.get("mergeable", False)
        else None
    )
    del model, optimizer, params, batches
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    on_cuda = device.type == "cuda"
    return {
        "step_p50_s": statistics.median(durations),
        "flops_per_token": counted["flops_per_token"],
        "achieved_flops_per_s": counted["flops_per_token"] * tokens / sum(durations),
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "train_peak_bytes": train["allocated"] if on_cuda else train["rss"],
        "train_rise_bytes": None if on_cuda else train["rss"] - resident,
        "forward_p50_s": forward,
        "forward_merged_p50_s": merged,
        "setup_s": setup_s,
    }


def _forward_p50(
    model: torch.nn.Module, batches: list[dict], device: torch.device, dtype: torch.dtype | None
) -> float:
    """Median forward time of the batches in eval mode, without gradients, the first one
    warm-up: what serving one batch costs (a prefix lengthens the sequence, an adapter adds
    layers, an unmerged LoRA adds a product)."""
    from peftbench.runner.train import autocast

    model.eval()
    durations = []
    with torch.no_grad():
        for i, batch in enumerate(batches):
            start = time.perf_counter()
            with autocast(device, dtype):
                model(**batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def _release_freed_memory() -> None:
    """Gives the heap that earlier methods freed back to the OS (glibc ``malloc_trim``).

    glibc keeps freed blocks in the process, so a method built after a bigger one fits into
    them and its resident set barely rises: without this, every method below the largest
    showed the same ~81 MB rise (one model load) in one process.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): no trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _bench_in_child(cfg: Any, device: str, steps: int) -> dict:
    """:func:`_bench_one` in a fresh process, after the imports every method shares, so that
    the resident set it starts from is the same for every method (an idle baseline)."""
    import peft  # noqa: F401  (imported by every method's build; not the method's memory)

    import peftbench.runner.assembly  # noqa: F401
    import tasks  # noqa: F401

    return {**_bench_one(cfg, torch.device(device), steps), "pid": os.getpid()}


def _bench_fresh(cfg: Any, device: torch.device, steps: int) -> dict:
    """:func:`_bench_one` alone in a new (spawned) process: nothing an earlier method
    allocated, freed or cached is there (in one process, LoRA's RSS rise read 326 or 537 MB
    depending on which methods ran before it, even with the heap trimmed)."""
    context = multiprocessing.get_context("spawn")  # fork would inherit this process's heap
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as child:
        return child.submit(_bench_in_child, cfg, str(device), steps).result()


def methods_bench(
    overrides: list[str],
    *,
    methods: list[str] | None,
    steps: int,
    repeats: int,
    fresh_process: bool = False,
) -> dict:
    """Every method's step time, FLOPs per token and training peak, relative to full
    fine-tuning and LoRA: ``repeats`` rounds, each running every method in turn (round ``i``
    in reverse order when ``i`` is odd), medians over rounds. With ``fresh_process``, every
    method of every round runs alone in a new process (a clean cost run: each method's
    memory independent of the others); else all run in this one (faster, for a quick look).

    Raises:
        ConfigError: an unknown method name.
    """
    from peftbench.errors import ConfigError
    from peftbench.runner.device import pick_device

    known = all_methods()
    names = methods or known
    unknown = [m for m in names if m not in known]
    if unknown:
        raise ConfigError(f"unknown method {', '.join(unknown)}", f"valid: {', '.join(known)}")
    names = list(dict.fromkeys([*REFERENCES, *names]))  # the references always run
    cfgs = {
        m: compose(
            [
                *_split_overrides(overrides, m),
                f"method={m}",
                f"train.max_steps={steps + 1}",
                "tracker=none",
                "data_cache=false",
            ]
        )
        for m in names
    }
    device = pick_device(cfgs[names[0]].device)
    load_before = os.getloadavg()[0]  # a clean measurement needs an idle machine: say if not
    runs: dict[str, list[dict]] = {m: [] for m in names}
    bench = _bench_fresh if fresh_process else _bench_one
    errors: dict[str, str] = {}
    paces: list[float] = []  # the machine's matmul rate after each round (TFLOP/s)
    started, done = time.monotonic(), 0
    for i in range(repeats):
        for m in names if i % 2 == 0 else names[::-1]:
            if m in errors:
                continue
            try:
                runs[m].append(bench(cfgs[m], device, steps))
                outcome = f"{1e3 * runs[m][-1]['step_p50_s']:.0f} ms a step"
            except Exception as error:  # e.g. a method that refuses this model: a row says so
                errors[m] = f"{type(error).__name__}: {' '.join(str(error).split())[:120]}"
                runs.pop(m)
                outcome = "failed (its row will say why)"
            done += 1  # a clean cost run of 21 methods took 34 min (verse): say where it is
            elapsed = time.monotonic() - started
            where = f"{done}/{repeats * len(names)} round {i + 1}/{repeats}"
            print(f"[costs] {where} {m}: {outcome} ({elapsed:.0f} s)", file=sys.stderr, flush=True)
        if measured := next((rs[0] for rs in runs.values() if rs), None):
            paces.append(_pace(device, measured["dtype"], measured["threads"]))
    keys = ("step_p50_s", "flops_per_token", "achieved_flops_per_s", "train_peak_bytes",
            "train_rise_bytes", "forward_p50_s", "forward_merged_p50_s")  # fmt: skip
    medians = {
        m: {k: statistics.median(r[k] for r in rs) if rs[0][k] is not None else None for k in keys}
        for m, rs in runs.items()
    }
    pace = statistics.median(paces) if paces else None
    for m, rs in runs.items():  # MFU against the matmul rate measured between the rounds
        medians[m]["mfu"] = medians[m]["achieved_flops_per_s"] / (pace * 1e12) if pace else None
        medians[m]["peak_dtype"] = dtype_name(rs[0]["dtype"])
    cfg = cfgs[names[0]]
    return {
        "medians": medians,
        "errors": errors,
        "device": str(device),
        "steps": steps,
        "repeats": repeats,
        "task": cfg.task.name,
        "task_version": cfg.task.get("version"),
        "model": cfg.model.name,
        "overrides": overrides,
        "isolation": "a fresh process per method and round" if fresh_process else "one process",
        "threads": next((rs[0]["threads"] for rs in runs.values()), torch.get_num_threads()),
        "load_1min_before": load_before,
        "matmul_tflops_by_round": paces,
        "cpu": cpu_identity() if device.type == "cpu" else None,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__,
    }


def _pace(device: torch.device, dtype: torch.dtype | None, threads: int) -> float:
    """This machine's matmul rate now, at the runs' dtype and threads (TFLOP/s, not cached).

    The same cost run on this machine's 2 cores took 1.7-2.3x as long a step on 2026-12-07
    as on 2026-12-05 (same FLOPs, same memory): the VM's host had changed, and its bf16
    matmul rate had fallen 2.3x. Measured beside the methods, the rate says which pace a
    file's times belong to (a changed rate flags a changed host; steps move by less than it),
    and it is the MFU's denominator (the cached peak may be days old or from a busy machine).
    """
    return measure(dtype_name(dtype), threads, device)["tflops"]


#: ``peftbench costs attention``'s kernels; the first is the reference of the ratios.
KERNELS = ("sdpa", "eager")


def kernels_bench(
    overrides: list[str], *, kernels: Sequence[str] = KERNELS, steps: int, repeats: int
) -> dict:
    """One model, method and task under each attention kernel (``model.attn_implementation``):
    ``repeats`` interleaved rounds in this process (round ``i`` reversed when ``i`` is odd),
    the step and eval-forward medians, so the ratios see the same machine state.

    Raises:
        ConfigError: a kernel transformers does not name (``model.attn_implementation``'s rule).
    """
    from peftbench.config.checks import validate
    from peftbench.runner.device import pick_device

    cfgs = {}
    for kernel in kernels:
        cfgs[kernel] = compose([*overrides, f"model.attn_implementation={kernel}",
                                f"train.max_steps={steps + 1}", "tracker=none",
                                "data_cache=false"])  # fmt: skip
        validate(cfgs[kernel], cuda_available=torch.cuda.is_available())
    device = pick_device(cfgs[kernels[0]].device)
    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {k: [] for k in kernels}
    for i in range(repeats):
        for kernel in kernels if i % 2 == 0 else kernels[::-1]:
            runs[kernel].append(_bench_one(cfgs[kernel], device, steps))
            step_ms = 1e3 * runs[kernel][-1]["step_p50_s"]
            print(f"[costs] round {i + 1}/{repeats} {kernel}: {step_ms:.0f} ms a step",
                  file=sys.stderr, flush=True)  # fmt: skip
    keys = ("step_p50_s", "forward_p50_s")
    cfg = cfgs[kernels[0]]
    return {
        "medians": {
            k: {key: statistics.median(r[key] for r in rs) for key in keys}
            for k, rs in runs.items()
        },  # fmt: skip
        "reference": kernels[0],
        "device": str(device),
        "task": cfg.task.name,
        "model": cfg.model.name,
        "method": cfg.method.name,
        "max_length": cfg.task.get("max_length"),
        "steps": steps,
        "repeats": repeats,
        "threads": runs[kernels[0]][0]["threads"],
        "dtype": str(runs[kernels[0]][0]["dtype"]),
        "load_1min_before": load_before,
        "torch": torch.__version__,
    }


def format_kernels(result: dict) -> str:
    """A Markdown table: each kernel's step and forward time and its ratio to the reference."""
    medians, reference = result["medians"], result["reference"]
    lines = [
        f"{result['model']}, {result['method']} on {result['task']} (max_length "
        f"{result['max_length']}), {result['device']}, {result['dtype']}, {result['threads']} "
        f"thread(s); medians of {result['repeats']} interleaved rounds of {result['steps']} "
        f"steps; load {result['load_1min_before']:.2f} before.",
        "",
        f"| kernel | step p50 (ms) | ÷ {reference} | forward p50 (ms) | ÷ {reference} |",
        "| :-- | --: | --: | --: | --: |",
    ]
    for kernel, row in medians.items():
        step, forward = row["step_p50_s"], row["forward_p50_s"]
        lines.append(
            f"| {kernel} | {1e3 * step:,.0f} | {_ratio(step, medians[reference]['step_p50_s'])} "
            f"| {1e3 * forward:,.0f} | {_ratio(forward, medians[reference]['forward_p50_s'])} |"
        )
    return "\n".join(lines)


def write_methods(result: dict, path: Path) -> list[Path]:
    """Writes ``result`` as JSON at ``path`` (what ``peftbench report --costs`` reads) and its
    table beside it (``.md``); each file appears whole or not at all."""
    from analysis.clean_costs import KIND

    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for target, text in (
        (path, json.dumps({"kind": KIND, **result}, indent=1, default=str) + "\n"),
        (path.with_suffix(".md"), format_methods(result) + "\n"),
    ):
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
        written.append(target)
    return written


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "–"
    return f"{value / reference:.2f}"


def _cpu_text(cpu: dict | None) -> str:
    if not cpu:
        return ""
    flags = ", ".join(cpu["flags"]) or "none of avx2/avx512/amx"
    return f" ({cpu['name']}, family {cpu['family']} model {cpu['model']}; {flags})"


def _pace_text(paces: list[float] | None) -> str:
    if not paces:  # files written before the pace was measured in the run
        return "this machine's cached matmul peak for the run's dtype and threads"
    rates = ", ".join(f"{1e3 * p:,.0f}" for p in paces)
    return (
        f"the machine's matmul rate measured after each round ({rates} GFLOP/s; a file "
        "with another rate ran on a host of another pace: compare its times with care)"
    )


def format_methods(result: dict) -> str:
    """A Markdown table: absolute figures and ratios to full fine-tuning and to LoRA."""
    medians = result["medians"]
    memory = "train RSS rise" if result["device"] == "cpu" else "train peak (allocated)"
    mem_key = "train_rise_bytes" if result["device"] == "cpu" else "train_peak_bytes"
    head = (
        "| method | step p50 (ms) | ÷ full | ÷ lora | MFLOP/token | ÷ full | ÷ lora "
        f"| {memory} (MB) | ÷ full | ÷ lora | GFLOP/s | MFU | forward p50 (ms) | merged (ms) |"
    )
    lines = [head, "| :-- |" + " --: |" * 13]
    full, lora = medians.get("full"), medians.get("lora")
    for m, row in sorted(medians.items()):
        cells = [m]
        for key, scale in (("step_p50_s", 1e3), ("flops_per_token", 1e-6), (mem_key, 1e-6)):
            value = row[key]
            cells.append(f"{value * scale:,.4g}" if value is not None else "–")
            cells.append(_ratio(value, full and full[key]))
            cells.append(_ratio(value, lora and lora[key]))
        achieved, mfu = row.get("achieved_flops_per_s"), row.get("mfu")
        cells.append(f"{achieved / 1e9:,.1f}" if achieved else "–")
        cells.append(f"{mfu:.1%}" if mfu is not None else "–")
        for key in ("forward_p50_s", "forward_merged_p50_s"):  # files before them: none
            value = row.get(key)
            cells.append(f"{value * 1e3:,.4g}" if value is not None else "–")
        lines.append("| " + " | ".join(cells) + " |")
    for m, error in sorted(result["errors"].items()):
        lines.append(f"| {m} | not run: {error} |" + " |" * 12)
    lines.append("")
    where = f"{result['task']} on {result['model']}, " if "task" in result else ""
    lines.append(
        f"{where}{result['device']}{_cpu_text(result.get('cpu'))}; {result['repeats']} "
        f"interleaved rounds of {result['steps']} timed steps per method (1 warm-up step "
        "apart), medians over rounds"
        + (f", {result['isolation']}" if "isolation" in result else "")
        + "; FLOPs counted "
        "by torch.utils.flop_counter on one real step, per padded token; memory: "
        + (
            "rise of the resident-set peak during training above what the process held "
            "before the method was built"
            if result["device"] == "cpu"
            else "CUDA max allocated during training"
        )
        + "; GFLOP/s: the counted FLOPs of the timed steps over their time; MFU: that over "
        + _pace_text(result.get("matmul_tflops_by_round"))
        + "; forward: one batch in eval mode without gradients after training, "
        "merged where the method folds into the weights"
        + (
            f"; {result['threads']} torch thread(s), 1-minute load average "
            f"{result['load_1min_before']:.2f} before the first method (an idle machine: ~0); "
            f"measured {result['measured_at']}"
            if "threads" in result
            else ""
        )
    )
    return "\n".join(lines)
