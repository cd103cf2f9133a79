"""QLoRA: Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs".

The frozen backbone's linear layers are quantised to 4-bit NormalFloat (NF4, bitsandbytes)
in place, then LoRA adapters train in higher precision on top. bitsandbytes' 4-bit kernels
need CUDA, so without it the method refuses with one line instead of failing deep inside.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import nn

from peftbench.methods.base import MethodContext, MethodNotApplicable, is_head_param
from peftbench.methods.peft_backend import peft_method


def check_qlora_available(name: str) -> None:
    """Raises :class:`MethodNotApplicable` unless CUDA and bitsandbytes are both present."""
    if not torch.cuda.is_available():
        raise MethodNotApplicable(
            f"method {name!r} (QLoRA) needs a CUDA GPU for bitsandbytes' 4-bit NF4 kernels; "
            "none is available (use method=lora on CPU)"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MethodNotApplicable(
            f"method {name!r} (QLoRA) needs the bitsandbytes package: pip install bitsandbytes"
        )


def quantize_linears_nf4(model: nn.Module, head_modules: list[str], compute_dtype: str) -> int:
    """Replaces every backbone ``nn.Linear`` by a CUDA ``bnb.nn.Linear4bit`` (NF4, double quant).

    The head stays in full precision (it trains). Returns how many layers were quantised.
    """
    import bitsandbytes as bnb

    dtype = getattr(torch, compute_dtype)
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not is_head_param(name, head_modules)
    ]
    modules = dict(model.named_modules())
    for name, linear in targets:
        quantized = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=dtype,
            compress_statistics=True,  # QLoRA's double quantisation of the scales
            quant_type="nf4",
        )
        quantized.weight = bnb.nn.Params4bit(
            linear.weight.data.cpu(), requires_grad=False, quant_type="nf4"
        )
        if linear.bias is not None:
            quantized.bias = nn.Parameter(linear.bias.data, requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(modules[parent] if parent else model, child, quantized.cuda())  # quantises
    return len(targets)


def qlora(model: nn.Module, cfg: Any, ctx: MethodContext) -> nn.Module:
    """Quantises the backbone to NF4 on the GPU, then adds LoRA (the YAML's ``peft:``)."""
    check_qlora_available(str(cfg.name))
    quantize_linears_nf4(model, ctx.head_modules, str(cfg.compute_dtype))
    return peft_method(model.cuda(), cfg, ctx)
