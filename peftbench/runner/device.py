"""The device a run uses and how it computes there: which device, seeds, precision."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from peftbench.launch import slots
from peftbench.runner import data_parallel


def pick_device(name: str) -> torch.device:
    """``auto``: the rank's own GPU under torchrun, a free GPU of several, else cuda or cpu."""
    if name != "auto":
        return torch.device(name)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    rank_device = data_parallel.local_device()
    if rank_device is not None:
        return rank_device
    count = torch.cuda.device_count()
    if count > 1:  # parallel runs on a multi-GPU node: one GPU each (docs/SCALING.md)
        return torch.device(f"cuda:{slots.claim_gpu(count, slots.job_number() % count)}")
    return torch.device("cuda")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def device_kind(name: str) -> str:
    """The kind of device a run will use (``auto`` resolved), without claiming one."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(name)


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX-BF16 in its flags).

    Only there is bf16 autocast faster than fp32 (measured on an AMD EPYC with avx512_bf16:
    MiniLM training steps 1.7-2.0x faster, docs/PERFORMANCE.md); without it torch emulates
    bf16 and is slower. Unknown (no /proc/cpuinfo: macOS, Windows) counts as no.
    """
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def resolve_precision(precision: str, kind: str) -> str:
    """``train.precision`` as it trains on a device of ``kind`` (cpu, cuda, mps): ``auto`` is
    bf16 autocast on CUDA and on CPUs with native bf16 (:func:`cpu_has_native_bf16`), fp32
    elsewhere; ``bf16`` and ``fp32`` are themselves."""
    if precision != "auto":
        return precision
    kind = kind.split(":", 1)[0]  # cuda:1 is cuda
    if kind == "cuda" or (kind == "cpu" and cpu_has_native_bf16()):
        return "bf16"
    return "fp32"


def accelerate(model: torch.nn.Module, device: torch.device, cfg: Any) -> torch.dtype | None:
    """GPU settings: TF32 matmuls, optional gradient checkpointing, the autocast dtype
    (``train.precision`` resolved by :func:`resolve_precision`)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    precision = resolve_precision(str(cfg.precision), device.type)
    return torch.bfloat16 if precision == "bf16" else None
