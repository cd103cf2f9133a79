"""Bottleneck adapters (peft has none), inserted at the output projections of sub-layers.

Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP": two adapters per layer,
one after the attention output projection and one after the feed-forward output projection,
each ``x + up(act(down(x)))`` added before the sub-layer's residual connection and LayerNorm.
Parameters per layer: 2 x (2*d*m + d + m) for hidden size d and bottleneck m.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peftbench.methods.base import METHOD_KINDS, MethodContext, freeze_all_but_head
from peftbench.methods.blocks import out_features, output_projections

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class BottleneckAdapter(nn.Module):
    """``x + up(act(down(x)))`` with a near-identity initialisation."""

    def __init__(self, dim: int, bottleneck: int, activation: str = "relu", init_std: float = 1e-2):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = _ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, dim)
        # Houlsby: small weights so the adapted network starts as (almost) the pretrained one.
        for linear in (self.down, self.up):
            nn.init.normal_(linear.weight, std=init_std)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


def _apply_adapter_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return module.adapter(output)


def attach_adapter(projection: nn.Module, adapter: nn.Module) -> None:
    """Runs ``adapter`` on the output of ``projection``.

    The adapter becomes a child of the projection and a forward hook applies it, so the
    backbone's own parameter names stay unchanged (checkpoints and peft keep working).
    """
    projection.add_module("adapter", adapter.to(projection.weight.device))
    projection.register_forward_hook(_apply_adapter_hook)


@METHOD_KINDS.register("houlsby")
def houlsby_adapters(model: nn.Module, cfg: Any, ctx: MethodContext) -> nn.Module:
    """Freezes the backbone and adds a bottleneck adapter after each attention and FFN block."""
    freeze_all_but_head(model, ctx.head_modules)
    for block in ("attention", "ffn"):
        for _, projection in output_projections(model, block):
            adapter = BottleneckAdapter(
                out_features(projection),
                int(cfg.bottleneck),
                activation=str(cfg.activation),
                init_std=float(cfg.init_std),
            )
            attach_adapter(projection, adapter)
    return model
