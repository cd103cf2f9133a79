"""How a run that did not succeed is recorded: failed, oom, diverged or interrupted."""

from __future__ import annotations

import traceback
from typing import Any

import torch

from peftbench.measure.instrument import AcceleratorBusy
from peftbench.runner.interrupt import Interrupted


def is_oom(error: BaseException) -> bool:
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    message = str(error).lower()  # CUDA's wording; under the CPU cap torch's and ENOMEM's
    words = ("out of memory", "can't allocate memory", "cannot allocate memory")
    return isinstance(error, RuntimeError) and any(w in message for w in words)


def failure(error: Exception, cfg: Any) -> dict:
    """The record fields of a run that raised: status failed, oom or diverged, and the step."""
    status, message = "failed", f"{type(error).__name__}: {error}"
    if is_oom(error) and getattr(error, "step", None) is None:  # not in the training loop
        status = "oom"
        message += (
            "; out of memory outside the training loop (set-up or evaluation), where "
            "train.batch_size does not count: make the method smaller (e.g. method.peft.r) "
            f"or lower train.eval_batch_size (now {cfg.train.get('eval_batch_size')})"
        )
    elif is_oom(error):
        status = "oom"
        message += (
            f"; to fit, lower train.batch_size (now {cfg.train.batch_size}) or "
            f"task.max_length (now {cfg.task.max_length}), or enable gradient checkpointing"
        )
    elif isinstance(error, FloatingPointError):
        status = "diverged"
        message += (
            f"; lower method.lr (now {cfg.method.lr}, x lr_scale {cfg.method.get('lr_scale', 1)})"
            " or train.max_grad_norm"
        )
    return {
        "status": status,
        "error": message,
        # set by the training loop: the optimisation step that was running (1-based)
        "error_step": getattr(error, "step", None),
        # a method that refuses a model, task or machine is a config error: one line suffices
        "traceback": None if is_refusal(error) else traceback.format_exc(limit=20),
    }


def interruption(stop: Interrupted) -> dict:
    """The record fields of a run stopped by a signal: where it was, how to go on."""
    checkpoint = getattr(stop, "checkpoint", None)
    where = f"after step {stop.step}" if stop.step else "before training"
    then = (
        f"checkpoint kept at {checkpoint}; the same command resumes from step {stop.step}"
        if checkpoint
        else "no checkpoint (train.checkpoint_every_steps=0 or no step done); the same "
        "command starts it again"
    )
    return {
        "status": "interrupted",
        "error": f"interrupted by {stop.name} {where}; {then}",
        "error_step": stop.step,
        "traceback": None,
    }


def is_refusal(error: Exception) -> bool:
    from peftbench.methods.base import MethodNotApplicable

    return isinstance(error, MethodNotApplicable | AcceleratorBusy)
