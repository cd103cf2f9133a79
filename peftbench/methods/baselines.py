"""Baselines every comparison needs: full fine-tuning and the linear probe (head only)."""

from __future__ import annotations

from typing import Any

from torch import nn

from peftbench.methods.base import (
    MethodContext,
    MethodNotApplicable,
    freeze_all_but_head,
)


def full_finetuning(model: nn.Module, cfg: Any, ctx: MethodContext) -> nn.Module:
    """Every parameter trains (the reference every PEFT method is compared against)."""
    for param in model.parameters():
        param.requires_grad = True
    return model


def linear_probe(model: nn.Module, cfg: Any, ctx: MethodContext) -> nn.Module:
    """Only the task head trains: the floor any PEFT method has to beat."""
    if not ctx.head_modules:
        raise MethodNotApplicable(
            f"method {cfg.name!r} trains only a task head, but {type(model).__name__} has none "
            "(its own LM head writes the output: text-to-text or generation); "
            "choose another method, e.g. method=lora"
        )
    freeze_all_but_head(model, ctx.head_modules)
    return model
