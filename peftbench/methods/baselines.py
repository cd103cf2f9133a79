"""Baselines every comparison needs: full fine-tuning."""

from __future__ import annotations

from typing import Any

from torch import nn

from peftbench.methods.base import METHOD_KINDS, MethodContext


@METHOD_KINDS.register("full")
def full_finetuning(model: nn.Module, cfg: Any, ctx: MethodContext) -> nn.Module:
    """Every parameter trains (the reference every PEFT method is compared against)."""
    for param in model.parameters():
        param.requires_grad = True
    return model
