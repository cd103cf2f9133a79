"""Hybrid methods composed from native modules and peft's prefix tuning.

- ``mam``: He et al. 2022, "Towards a Unified View of Parameter-Efficient Transfer Learning":
  the "Mix-And-Match" adapter = prefix tuning at the attention + a scaled parallel adapter at
  the feed-forward block.
- ``unipelt``: Mao et al. 2022, "UniPELT: A Unified Framework for Parameter-Efficient Language
  Model Tuning": LoRA (query, value), prefix tuning and a sequential adapter after the
  feed-forward block, LoRA and adapter each scaled by a learned gate ``sigmoid(W x)``. A gate
  is one value per example, not per token: the paper's code feeds the gate the sub-layer
  input averaged over the sequence (``torch.mean(hidden_states, dim=1)``, padding included,
  as there). The prefix is peft's and ungated (UniPELT also gates the prefix; peft exposes
  no hook for it).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from peftbench.methods.adapters import _ACTIVATIONS, add_parallel_adapters, add_sequential_adapters
from peftbench.methods.base import MethodContext, freeze_all_but_head, is_head_param
from peftbench.methods.blocks import output_projections
from peftbench.methods.peft_backend import peft_args, wrap


def example_gate(gate: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``sigmoid(W mean_t(x))``: one gate per example, broadcast over the sequence."""
    if x.dim() < 3:
        return torch.sigmoid(gate(x))
    return torch.sigmoid(gate(x.mean(dim=1))).unsqueeze(1)  # (batch, 1, 1)


class GatedLoRA(nn.Module):
    """``sigmoid(g(x)) * (alpha / r) * B(A(x))``: a LoRA update scaled by an input gate."""

    def __init__(self, in_features: int, out_features: int, *, rank: int, alpha: float):
        super().__init__()
        self.lora_A = nn.Linear(in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, out_features, bias=False)
        self.gate = nn.Linear(in_features, 1)
        self.scaling = alpha / rank
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)  # LoRA: the update starts at exactly zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return example_gate(self.gate, x) * self.scaling * self.lora_B(self.lora_A(x))


class GatedAdapter(nn.Module):
    """``x + sigmoid(g(x)) * up(act(down(x)))``: a bottleneck adapter behind an input gate."""

    def __init__(self, dim: int, bottleneck: int, activation: str = "relu", init_std: float = 1e-2):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = _ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, dim)
        self.gate = nn.Linear(dim, 1)
        for linear in (self.down, self.up):
            nn.init.normal_(linear.weight, std=init_std)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + example_gate(self.gate, x) * self.up(self.act(self.down(x)))


def _add_gated_lora_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output + module.gated_lora(args[0])


def add_gated_lora(model: nn.Module, *, rank: int, alpha: float) -> None:
    """Adds a gated LoRA branch to every self-attention query and value projection."""
    for role in ("query", "value"):
        for _, linear in output_projections(model, role):
            lora = GatedLoRA(linear.in_features, linear.out_features, rank=rank, alpha=alpha)
            linear.add_module("gated_lora", lora.to(linear.weight.device))
            linear.register_forward_hook(_add_gated_lora_hook)


def _wrap_with_prefix(model: nn.Module, cfg: Any, ctx: MethodContext) -> nn.Module:
    """Adds peft's prefix tuning (``cfg.peft``) and keeps the native modules trainable.

    peft freezes the whole base model when it wraps it, native modules included, so the
    parameters that were trainable before wrapping are switched back on afterwards. The task
    head is not among them: peft trains a copy of it (``modules_to_save``) and keeps the
    original frozen; switching the original back on would train, count and save it twice.
    """
    native = [
        p
        for n, p in model.named_parameters()
        if p.requires_grad and not is_head_param(n, ctx.head_modules)
    ]
    wrapped = wrap(model, peft_args(cfg, ctx))
    for param in native:
        param.requires_grad = True
    return wrapped


def mam_adapter(model: nn.Module, cfg: Any, ctx: MethodContext) -> nn.Module:
    """Prefix tuning at the attention + scaled parallel adapter at every FFN block."""
    freeze_all_but_head(model, ctx.head_modules)
    add_parallel_adapters(model, cfg)
    return _wrap_with_prefix(model, cfg, ctx)


def unipelt(model: nn.Module, cfg: Any, ctx: MethodContext) -> nn.Module:
    """Gated LoRA (query, value) + gated adapter after every FFN block + prefix tuning."""
    freeze_all_but_head(model, ctx.head_modules)
    add_gated_lora(model, rank=int(cfg.lora_r), alpha=float(cfg.lora_alpha))
    add_sequential_adapters(
        model,
        ("ffn",),
        lambda width: GatedAdapter(
            width, int(cfg.bottleneck), str(cfg.activation), float(cfg.init_std)
        ),
    )
    return _wrap_with_prefix(model, cfg, ctx)
