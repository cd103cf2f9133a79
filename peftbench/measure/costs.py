"""A run's compute costs beyond the clocks: counted FLOPs, MFU, inference latency.

Each is measured after training and testing and changes nothing the run computed.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.data import DataLoader

from peftbench.measure.instrument import (
    StepTimer,
    count_step_flops,
    forward_params,
    inference_speed,
    peak_tflops,
    training_flops_per_token,
)
from peftbench.runner.loaders import first_batches


def compute_cost(
    model: torch.nn.Module,
    timer: StepTimer,
    trainable: int,
    device: torch.device,
    cfg: Any,
    counted: dict,
    dtype: torch.dtype | None = None,
) -> dict:
    """FLOPs of the run as counted on one real step, and MFU.

    ``counted`` is ``instrument.count_step_flops`` on the first training batch:
    FLOPs per *padded* token (``input_ids.numel()``; for an encoder-decoder the decoder's work
    is included, spread over the source tokens). The MFU numerator multiplies it by the same
    padded token count of the measured steps, so numerator and count agree.

    The denominator: on a GPU the datasheet peak (``cfg.peak_tflops`` or the table), with the
    measured one beside it as ``mfu_measured``; on a CPU, which has no trustworthy datasheet
    figure, this machine's measured peak for the run's dtype and thread count
    (:mod:`peftbench.measure.peak`; ``instrument.measured_peak=false`` skips it).
    """
    per_token = counted["flops_per_token"]
    seconds = timer.measured_seconds
    achieved = per_token * timer.padded_tokens / seconds if seconds else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    datasheet = peak_tflops(name, cfg.get("peak_tflops")) if device.type == "cuda" else None
    measured = _measured_peak(device, dtype) if cfg.get("measured_peak", True) else None
    measured_tflops = measured["tflops"] if measured else None
    peak = datasheet if device.type == "cuda" else measured_tflops
    return {
        "flops_per_token": per_token,  # measured (FlopCounterMode), per padded token
        # 4N + 2N_trainable, N without embedding tables: the old formula, for comparison
        "flops_per_token_analytic": training_flops_per_token(forward_params(model), trainable),
        "flops": round(per_token * timer.padded_tokens_all),
        "flops_counted": counted,  # the counted step: flops, tokens, by_op, seconds
        "achieved_tflops": achieved / 1e12 if achieved is not None else None,
        "mfu": _ratio(achieved, peak),
        "mfu_measured": _ratio(achieved, measured_tflops),
        "peak": {
            "datasheet_tflops": datasheet,
            "measured": measured,  # tflops, dtype, threads, device, when, load at the time
            "mfu_uses": "datasheet" if device.type == "cuda" else "measured",
        },
    }


def _ratio(achieved: float | None, peak_tflops: float | None) -> float | None:
    return achieved / (peak_tflops * 1e12) if peak_tflops and achieved is not None else None


def _measured_peak(device: torch.device, dtype: torch.dtype | None) -> dict | None:
    """The cached peak of this machine for the run's dtype and threads (measured once)."""
    from peftbench.assets import cache_root
    from peftbench.measure.peak import dtype_name, peak

    if dtype_name(dtype) not in ("fp32", "bf16", "fp16"):
        return None
    threads = torch.get_num_threads()
    return peak(dtype_name(dtype), threads, device, cache_dir=cache_root())


_RUNS_IN_PROCESS = 0  # runs started by this process so far (Hydra's basic launcher: a sweep)


def runs_before() -> int:
    """How many runs this process started before this one, and counts this one.

    CPU resident-set peaks depend on what earlier runs of the process left mapped (freed
    memory the allocator keeps): the record says whether its process was fresh.
    """
    global _RUNS_IN_PROCESS
    before, _RUNS_IN_PROCESS = _RUNS_IN_PROCESS, _RUNS_IN_PROCESS + 1
    return before


def count_flops(
    model: torch.nn.Module, loader: DataLoader, device: torch.device, dtype: torch.dtype | None
) -> dict:
    """One real training step's forward + backward on the first training batch, counted.

    Run after training and testing; even so it changes nothing: the batch order is put back
    (``first_batches``), the RNG streams are forked, gradients are discarded
    (``count_step_flops``). The architecture, hence the count, is the one that trained.
    """
    start = time.perf_counter()
    (batch,) = first_batches(loader, device, 1)
    counted = count_step_flops(model, batch, device, dtype)
    return {**counted, "seconds": time.perf_counter() - start}


def inference_cost(
    model: torch.nn.Module, loader: DataLoader, device: torch.device, method_cfg: Any
) -> dict:
    """Forward latency on the test split as trained and, where the method merges, merged.

    Whether it merges is the method YAML's ``mergeable`` (one place, also what the merge
    tests check). Measured last: merging rewrites the model in place.
    """
    from peftbench.methods.base import merge

    result = {"unmerged": inference_speed(model, loader, device), "merged": None}
    if method_cfg.get("mergeable", False):
        result["merged"] = inference_speed(merge(model, method_cfg), loader, device)
    return result
