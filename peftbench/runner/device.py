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


def accelerate(model: torch.nn.Module, device: torch.device, cfg: Any) -> torch.dtype | None:
    """GPU settings: TF32 matmuls, optional gradient checkpointing, the autocast dtype.

    ``train.precision``: ``auto`` is bf16 autocast on CUDA and fp32 elsewhere (CPU bf16 is
    slower than fp32 on most CPUs); ``bf16`` or ``fp32`` force it.
    """
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return torch.bfloat16 if precision == "bf16" else None
