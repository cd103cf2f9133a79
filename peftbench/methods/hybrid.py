"""Hybrid methods composed from native modules and peft's prefix tuning.

- ``mam``: He et al. 2022, "Towards a Unified View of Parameter-Efficient Transfer Learning":
  the "Mix-And-Match" adapter = prefix tuning at the attention + a scaled parallel adapter at
  the feed-forward block. The prefix is trained through the reference's reparameterisation
  (jxhe/unify-parameter-efficient-tuning petl/petl_factory.py L66-71: an embedding of the
  prefix positions through Linear-Tanh-Linear, mid_dim 800 by default, petl/options.py
  L150-155): peft's ``prefix_projection`` is that same MLP.
- ``unipelt``: Mao et al. 2022, "UniPELT: A Unified Framework for Parameter-Efficient Language
  Model Tuning", as its reference code (morningmoni/UniPELT): LoRA on query and value, an
  adapter after the feed-forward block in AdapterHub's Pfeiffer placement (the reference's
  default ``adapter_config: pfeiffer``, transformers/adapters/training.py L15-16) and a
  prefix through an MLP (prefix embedding -> Linear(d, mid_dim) -> Tanh -> Linear(mid_dim,
  2 L d), transformers/models/bert/modeling_bert.py L580-586), each behind its own gate. A
  gate is ``mean_t sigmoid(W h_t + b)``: one value per example, the mean over the sequence
  (padding included, as there) of per-token sigmoids, read from the sub-module's input:
  LoRA's gate *replaces* its alpha/r scaling (lora_layers.py L166-171); the adapter's scales
  its branch before the residual (transformers/adapters/modeling.py L120-127); the prefix's
  scales the prefix keys and values of its layer (modeling_bert.py L316-322). Gates,
  adapter projections and the LoRA gate start as the reference's (BERT init: normal, std
  0.02, zero bias).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from peftbench.methods.adapters import _ACTIVATIONS, add_parallel_adapters, add_pfeiffer_adapters
from peftbench.methods.base import MethodContext, freeze_all_but_head, is_head_param
from peftbench.methods.blocks import output_projections
from peftbench.methods.peft_backend import peft_args, wrap

#: The reference's initialisation of every new linear layer (gates, adapter projections):
#: BERT's ``init_bert_weights``, normal with std 0.02 and zero bias.
BERT_INIT_STD = 0.02


def _bert_init(linear: nn.Linear, std: float = BERT_INIT_STD) -> nn.Linear:
    nn.init.normal_(linear.weight, std=std)
    nn.init.zeros_(linear.bias)
    return linear


def example_gate(gate: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``mean_t sigmoid(W x_t + b)``: one gate per example, broadcast over the sequence.

    The mean of the per-token sigmoids, not the sigmoid of the mean input (UniPELT's
    lora_layers.py L168-169, adapters/modeling.py L123-124, modeling_bert.py L320).
    """
    if x.dim() < 3:
        return torch.sigmoid(gate(x))
    return torch.sigmoid(gate(x)).mean(dim=1, keepdim=True)  # (batch, 1, 1)


class GatedLoRA(nn.Module):
    """``g(x) * B(A(x))``: a LoRA update whose scale *is* the gate (no alpha / r).

    UniPELT's ``LoRA_Linear`` with ``add_gate`` overwrites ``self.scaling`` with the gate
    (lora_layers.py L166-171), so alpha plays no part.
    """

    def __init__(self, in_features: int, out_features: int, *, rank: int):
        super().__init__()
        self.lora_A = nn.Linear(in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, out_features, bias=False)
        self.gate = _bert_init(nn.Linear(in_features, 1))
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)  # LoRA: the update starts at exactly zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return example_gate(self.gate, x) * self.lora_B(self.lora_A(x))


class GatedAdapter(nn.Module):
    """``x + g(x) * up(act(down(x)))``: a bottleneck adapter behind an input gate.

    In the Pfeiffer placement (:func:`peftbench.methods.adapters.add_pfeiffer_adapters`) its
    input is the block's ``LN(h + x)`` and only :meth:`branch` is used:
    ``LN(h + x + g * up(act(down(LN(h + x)))))``, the reference's gated adapter.
    """

    def __init__(self, dim: int, bottleneck: int, activation: str = "relu", init_std: float = 0.02):
        super().__init__()
        self.down = _bert_init(nn.Linear(dim, bottleneck), init_std)
        self.act = _ACTIVATIONS[activation]()
        self.up = _bert_init(nn.Linear(bottleneck, dim), init_std)
        self.gate = _bert_init(nn.Linear(dim, 1))

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return example_gate(self.gate, x) * self.up(self.act(self.down(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


def _add_gated_lora_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output + module.gated_lora(args[0])


def add_gated_lora(model: nn.Module, *, rank: int) -> None:
    """Adds a gated LoRA branch to every self-attention query and value projection."""
    for role in ("query", "value"):
        for _, linear in output_projections(model, role):
            lora = GatedLoRA(linear.in_features, linear.out_features, rank=rank)
            linear.add_module("gated_lora", lora.to(linear.weight.device))
            linear.register_forward_hook(_add_gated_lora_hook)


def _self_attention_cache(kwargs: dict) -> Any:
    cache = kwargs.get("past_key_values", kwargs.get("past_key_value"))
    return getattr(cache, "self_attention_cache", cache)  # an encoder-decoder cache's own


def _gate_prefix_hook(n_virtual: int):
    """A pre-hook on a self-attention module that scales its layer's prefix by its gate.

    peft passes the prefix as a fresh key/value cache each forward; before the attention
    appends this input's keys and values, the prefix slots of this layer (the first
    ``n_virtual`` positions) are replaced by ``gate * prefix``, gate computed from the
    attention's input. A cache reused by generation is gated once (its first forward).
    """

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        cache = _self_attention_cache(kwargs)
        index = getattr(module, "layer_idx", None)
        layers = getattr(cache, "layers", None)
        if layers is None or index is None or index >= len(layers):
            return
        gated = cache.__dict__.setdefault("_peftbench_gated", set())
        layer = layers[index]
        keys = getattr(layer, "keys", None)
        if index in gated or keys is None or keys.dim() != 4 or keys.shape[-2] < n_virtual:
            return
        hidden = args[0] if args else kwargs["hidden_states"]
        gate = example_gate(module.prefix_gate, hidden).unsqueeze(1)  # (batch, 1, 1, 1)
        if keys.shape[0] != gate.shape[0]:
            return
        for attr in ("keys", "values"):
            states = getattr(layer, attr)
            prefix, rest = states[..., :n_virtual, :], states[..., n_virtual:, :]
            setattr(layer, attr, torch.cat([gate * prefix, rest], dim=-2))
        gated.add(index)

    return hook


def add_prefix_gates(model: nn.Module, n_virtual: int) -> int:
    """Puts a gate on every layer's prefix (UniPELT's ``prefix_gate``); returns how many.

    The gate lives in the self-attention module that owns the query projection and reads
    that module's input, as modeling_bert.py L248-249, L320.
    """
    attentions = {}
    for name, linear in output_projections(model, "query"):
        owner = model.get_submodule(name.rpartition(".")[0])
        attentions[id(owner)] = (owner, linear.in_features, linear.weight.device)
    for owner, width, device in attentions.values():
        owner.add_module("prefix_gate", _bert_init(nn.Linear(width, 1)).to(device))
        owner.register_forward_pre_hook(_gate_prefix_hook(n_virtual), with_kwargs=True)
    return len(attentions)


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
    """Gated LoRA (query, value) + gated Pfeiffer adapter + gated MLP-reparameterised prefix."""
    freeze_all_but_head(model, ctx.head_modules)
    add_gated_lora(model, rank=int(cfg.lora_r))
    add_pfeiffer_adapters(
        model,
        lambda width: GatedAdapter(
            width, int(cfg.bottleneck), str(cfg.activation), float(cfg.init_std)
        ),
    )
    add_prefix_gates(model, int(cfg.peft.num_virtual_tokens))
    return _wrap_with_prefix(model, cfg, ctx)
