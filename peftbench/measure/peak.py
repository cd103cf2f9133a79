"""This machine's measured matrix-multiply peak: the denominator of MFU where no datasheet is.

A CPU has no datasheet figure a run could trust (turbo, AVX-512 down-clocking, how many
cores a run really has), so peftbench measures one: the best sustained rate of square
``torch.mm`` at the sizes a transformer's projections have, per dtype and thread count, on
the run's own device. The figure is cached per machine, torch version, device, dtype and
thread count (``<cache>/peak/``), so a sweep measures it once; ``peftbench costs peak
--remeasure`` measures again (do it on an idle machine: a busy one gives a low peak and so
a flattering MFU, and the cached entry says when and how it was measured).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

#: Square sizes tried; the peak is the best of them. 384-1536 covers MiniLM to BERT-base's
#: projections, 2048 what larger models multiply.
SIZES = (384, 768, 1024, 1536, 2048)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MIN_SECONDS = 0.25  # per size: long enough to leave timer noise and warm-up behind


def dtype_name(dtype: torch.dtype | None) -> str:
    """``fp32`` for full precision (a run without autocast), else the autocast dtype's name."""
    if dtype is None:
        return "fp32"
    return next(name for name, value in DTYPES.items() if value == dtype)


def device_label(device: torch.device) -> str:
    """What the cache keys a device by: the GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: The instruction-set flags that decide which matmul kernels a CPU gets (bf16, AMX).
MATMUL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_identity(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict | None:
    """The CPU as /proc/cpuinfo names it: model name, family, model, stepping and the
    :data:`MATMUL_FLAGS` it has; None off Linux.

    A cloud VM's model name can hide its generation ("AMD EPYC"); family and model do not.
    The host behind this project's VM changed its pace between days (bf16 matmul 499 GFLOP/s
    on 2026-12-05, 213 on 2026-12-07, fp32 105 and 96): records and cost files keep this so
    such a change can be traced to the host.
    """
    try:
        first = cpuinfo.read_text().split("\n\n", 1)[0]  # the first core speaks for all
    except OSError:
        return None
    fields = dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition(":") for line in first.splitlines())
    )
    flags = set(fields.get("flags", "").split())
    return {
        "name": fields.get("model name"),
        "family": fields.get("cpu family"),
        "model": fields.get("model"),
        "stepping": fields.get("stepping"),
        "flags": [f for f in MATMUL_FLAGS if f in flags],
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(size: int, dtype: torch.dtype, device: torch.device) -> float:
    """FLOP/s of repeated ``size`` x ``size`` products, after one untimed warm-up."""
    values = torch.Generator().manual_seed(0)  # its own: a run's RNG streams stay untouched
    a = torch.randn(size, size, generator=values).to(device, dtype)
    b = torch.randn(size, size, generator=values).to(device, dtype)
    torch.mm(a, b)
    _sync(device)
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < MIN_SECONDS or calls < 3:
        torch.mm(a, b)
        calls += 1
        if calls % 4 == 0:
            _sync(device)
    _sync(device)
    elapsed = time.perf_counter() - start
    return 2 * size**3 * calls / elapsed


def measure(dtype: str, threads: int, device: torch.device) -> dict:
    """The peak of one dtype at one thread count: the best size's rate, with every size's."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rates = {size: _rate(size, DTYPES[dtype], device) for size in SIZES}
    finally:
        torch.set_num_threads(previous)
    best = max(rates, key=rates.get)
    return {
        "tflops": rates[best] / 1e12,
        "best_size": best,
        "by_size_tflops": {str(s): r / 1e12 for s, r in rates.items()},
        "dtype": dtype,
        "threads": threads,
        "device": device_label(device),
        "torch": torch.__version__,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_load_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "source": "measured",
    }


def _cache_file(dtype: str, threads: int, device: torch.device, cache_dir: Path) -> Path:
    key = f"{device_label(device)}|{torch.__version__}|{dtype}|{threads}|{platform.node()}"
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in key)
    return cache_dir / "peak" / f"{safe[:180]}.json"


def peak(
    dtype: str, threads: int, device: torch.device, *, cache_dir: Path, remeasure: bool = False
) -> dict:
    """The cached measurement for this machine, dtype and thread count, measuring it if absent."""
    path = _cache_file(dtype, threads, device, cache_dir)
    if not remeasure:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass  # absent or damaged: measure again
    result = measure(dtype, threads, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        json.dump(result, tmp, indent=1)
    os.replace(tmp.name, path)  # two runs measuring at once: either complete file wins
    return result


def format_peaks(results: list[dict]) -> str:
    """A Markdown table of measured peaks, one row per dtype and thread count."""
    sizes = list(results[0]["by_size_tflops"]) if results else []
    lines = [
        "| dtype | threads | peak GFLOP/s | at size | "
        + " | ".join(f"{s}²" for s in sizes)
        + " | measured | load (1 min) |",
        "| :-- | --: | --: | --: |" + " --: |" * len(sizes) + " :-- | --: |",
    ]
    for r in results:
        by_size = " | ".join(f"{r['by_size_tflops'][s] * 1e3:,.1f}" for s in sizes)
        load = r.get("cpu_load_1min")
        lines.append(
            f"| {r['dtype']} | {r['threads']} | {r['tflops'] * 1e3:,.1f} | {r['best_size']} | "
            f"{by_size} | {r['measured_at']} | {'–' if load is None else f'{load:.2f}'} |"
        )
    device = results[0]["device"] if results else "?"
    lines += ["", f"Device: {device}; torch {torch.__version__}. Best of square torch.mm sizes."]
    return "\n".join(lines) + "\n"
