"""Bottleneck adapters (peft has none), inserted around the sub-layers of every family.

- Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP": two sequential
  adapters per layer, after the attention and after the feed-forward sub-layer, each
  ``x + up(act(down(x)))`` added before the sub-layer's residual connection and LayerNorm.
  On the BERT family the adapter reads the sub-layer's output *after* its dropout, as the
  reference code does (google-research/adapter-bert; adapter-transformers'
  ``bottleneck_layer_forward`` runs after ``self.dropout``); on the other families it reads
  the output projection (Llama/Gemma have no dropout there; T5 keeps it after the adapter).
  The paper also trains the layer normalisation parameters per task, so the LayerNorms
  (RMSNorms) of the transformer layers train too. Parameters per layer: 2 x (2*d*m + d + m)
  for hidden size d and bottleneck m, plus the layer's norm parameters (2 x 2d on BERT).
- Pfeiffer et al. 2021, "AdapterFusion: Non-Destructive Task Composition for Transfer
  Learning" (EACL, arXiv:2005.00247), the "Pfeiffer" configuration of AdapterHub
  (``SeqBnConfig``: original_ln_before, residual_before_ln, original_ln_after): one adapter
  per layer, after the feed-forward output, reading the sub-layer's normalised output
  ``LN(h + x)`` (h: FFN output after dropout, x: the sub-layer's input), its residual taken
  before that LayerNorm (h), and the result put through the *same* original LayerNorm:
  ``LN(h + x + A(LN(h + x)))`` with ``A(z) = up(act(down(z)))``. Pre-norm families (Llama,
  Gemma, T5) have no LayerNorm there (AdapterHub passes none), which leaves
  ``y + A(y)`` on the FFN's residual sum ``y = x + h``. Per layer: 2*d*m + d + m.
- He et al. 2022, "Towards a Unified View of Parameter-Efficient Transfer Learning" (scaled
  parallel adapter): ``FFN(x) + s * up(act(down(x)))`` reading the feed-forward block's input.
  Per layer: 2*d*m + d + m.
- Mahabadi et al. 2021, "Compacter": Houlsby placement, but each projection is a
  parameterised hypercomplex multiplication (PHM) layer ``W = sum_i A_i kron (s_i t_i^T)``
  with the n x n matrices ``A_i`` shared by every layer of the model. Total:
  n^3 + L * 2 adapters * (2*(d + m) + d + m), plus the model's norms where the YAML trains
  them (``unfreeze_layer_norms``, as the reference's compacter.json L36). Initialised as the
  reference (rabeehk/compacter seq2seq/configs/compacter.json L40, L46-47): s_i, t_i
  Glorot-uniform with gain sqrt(2) (hypercomplex/inits.py L9-10, layers.py L107-111), the
  shared rule A normal with std ``phm_init_range`` = 1e-4 (third_party/models/t5/
  modeling_t5.py L1552-1555), biases zero.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from peftbench.methods.base import MethodContext, freeze_all_but_head, is_head_param
from peftbench.methods.blocks import ffn_pairs, layer_stacks, out_features, output_projections

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

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """``up(act(down(x)))``: the adapter without its residual connection."""
        return self.up(self.act(self.down(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class ParallelAdapter(nn.Module):
    """``s * up(act(down(x)))``: the scaled branch added beside a block (He et al. 2022).

    ``up`` starts at zero (the LoRA-style initialisation of the paper's code), so the adapted
    network starts exactly as the pretrained one.
    """

    def __init__(self, dim: int, bottleneck: int, *, scale: float, activation: str = "relu"):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = _ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, dim)
        self.scale = scale
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(self.act(self.down(x)))


class PHMLinear(nn.Module):
    """A linear layer whose weight is a sum of Kronecker products (Compacter's PHM layer).

    ``W = sum_i A_i kron B_i`` with ``B_i = s_i t_i^T`` of rank ``rank`` ("low-rank
    parameterised hypercomplex multiplication"). ``rule`` holds the n matrices ``A_i`` and is
    shared between layers; only ``s``, ``t`` and the bias belong to this layer.
    """

    def __init__(self, rule: nn.Parameter, in_features: int, out_features: int, rank: int = 1):
        """``s`` and ``t`` Glorot-uniform with gain sqrt(2), each of the n slices apart, as the
        reference's ``hypercomplex_nonlinearity: glorot-uniform`` (layers.py L107-111)."""
        super().__init__()
        n = rule.shape[0]
        if in_features % n or out_features % n:
            raise ValueError(
                f"PHM with n={n} needs sizes divisible by n: {in_features}, {out_features}"
            )
        # A plain attribute, not a submodule/parameter: the shared rule is registered once, on
        # the model, so it is counted, trained and saved once.
        self._rule = [rule]
        self.s = nn.Parameter(torch.empty(n, in_features // n, rank))
        self.t = nn.Parameter(torch.empty(n, rank, out_features // n))
        self.bias = nn.Parameter(torch.zeros(out_features))
        for i in range(n):  # the rule A (std 1e-4) keeps W, and the adapter, near zero
            nn.init.xavier_uniform_(self.s.data[i], gain=math.sqrt(2))
            nn.init.xavier_uniform_(self.t.data[i], gain=math.sqrt(2))

    def weight(self) -> torch.Tensor:
        rule = self._rule[0]
        n, p, q = rule.shape[0], self.s.shape[1], self.t.shape[2]
        blocks = self.s @ self.t  # (n, p, q): B_i = s_i t_i^T
        # kron(A_i, B_i)[a*p + c, b*q + e] = A_i[a, b] * B_i[c, e], summed over i.
        return torch.einsum("iab,ice->acbe", rule, blocks).reshape(n * p, n * q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight() + self.bias


class PHMAdapter(nn.Module):
    """``x + up(act(down(x)))`` with PHM projections (one Compacter adapter)."""

    def __init__(
        self, rule: nn.Parameter, dim: int, bottleneck: int, *, activation: str, rank: int
    ):
        super().__init__()
        self.down = PHMLinear(rule, dim, bottleneck, rank)
        self.act = _ACTIVATIONS[activation]()
        self.up = PHMLinear(rule, bottleneck, dim, rank)

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


def attach_parallel(entry: nn.Module, exit_: nn.Module, adapter: nn.Module) -> None:
    """Adds ``adapter(input of entry)`` to the output of ``exit_`` (a parallel branch).

    A pre-hook on the block's first linear layer keeps its input until the block's output
    projection runs; the hook then consumes it, so no activation outlives the forward pass.
    """
    exit_.add_module("parallel_adapter", adapter.to(exit_.weight.device))
    inputs: list[torch.Tensor] = []

    def keep_input(module: nn.Module, args: tuple) -> None:
        inputs.append(args[0])

    def add_branch(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + module.parallel_adapter(inputs.pop())

    entry.register_forward_pre_hook(keep_input)
    exit_.register_forward_hook(add_branch)


def _attach_to_output(module: nn.Module, adapter: nn.Module, device: torch.device) -> None:
    """Runs ``adapter`` on the output of any module (a tensor, or a tuple's first element)."""
    module.add_module("adapter", adapter.to(device))

    def apply(mod: nn.Module, args: tuple, output: Any) -> Any:
        if isinstance(output, tuple):
            return (mod.adapter(output[0]), *output[1:])
        return mod.adapter(output)

    module.register_forward_hook(apply)


def _post_ln_output_blocks(model: nn.Module, pattern: str) -> list[tuple[str, nn.Module]]:
    """BERT-style sub-layer output blocks (``dense`` -> ``dropout`` -> ``LayerNorm(h + x)``)."""
    found = re.compile(pattern)
    return [
        (name, module)
        for name, module in model.named_modules()
        if found.search(name)
        and all(hasattr(module, part) for part in ("dense", "dropout", "LayerNorm"))
    ]


def add_houlsby_adapters(model: nn.Module, make: Callable[[int], nn.Module]) -> None:
    """Houlsby placement: after each attention and FFN sub-layer's dropout (BERT family), or
    after its output projection (the other families)."""
    blocks = _post_ln_output_blocks(model, r"(attention\.output|layer\.\d+\.output)$")
    if not blocks:
        add_sequential_adapters(model, ("attention", "ffn"), make)
        return
    device = next(model.parameters()).device
    for _, block in blocks:
        _attach_to_output(block.dropout, make(out_features(block.dense)), device)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("Norm")


def train_all_norms(model: nn.Module, head_modules: list[str]) -> int:
    """Unfreezes every norm layer of the backbone (embeddings' and final ones included);
    returns how many scalars.

    Compacter's ``unfreeze_layer_norms`` trains each ``T5LayerNorm``/``LayerNorm`` of the
    model that is not inside an adapter (rabeehk/compacter seq2seq/utils/utils.py L100-106).
    """
    count = 0
    for name, module in model.named_modules():
        if _is_norm(module) and not is_head_param(name, head_modules):
            for param in module.parameters(recurse=False):
                param.requires_grad = True
                count += param.numel()
    return count


def train_layer_norms(model: nn.Module) -> int:
    """Unfreezes the norm layers inside the transformer layers; returns how many scalars.

    Houlsby et al. 2019 train "the layer normalization parameters" per task beside the
    adapters. The embedding LayerNorm and a final norm outside the layer stacks stay frozen.
    """
    count = 0
    for _, stack in layer_stacks(model):
        for module in stack.modules():
            if isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("Norm"):
                for param in module.parameters(recurse=False):
                    param.requires_grad = True
                    count += param.numel()
    return count


def _pfeiffer_post_ln(block: nn.Module, adapter: BottleneckAdapter) -> None:
    """``LN(h + x + A(LN(h + x)))`` on a BERT-style output block, its own LayerNorm reused."""
    block.add_module("adapter", adapter)
    kept: list[torch.Tensor] = []  # h, the FFN output after dropout, until the block returns

    def keep_h(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        kept.append(output)

    def rewrite(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor):
        x = args[1] if len(args) > 1 else kwargs["input_tensor"]
        h = kept.pop()
        # output is the block's own LN(h + x): the adapter's input; residual h (before the LN)
        return module.LayerNorm(h + x + module.adapter.branch(output))

    block.dropout.register_forward_hook(keep_h)
    block.register_forward_hook(rewrite, with_kwargs=True)


def add_pfeiffer_adapters(model: nn.Module, make: Callable[[int], nn.Module]) -> None:
    """Pfeiffer placement (see the module docstring) in every layer of every stack."""
    device = next(model.parameters()).device
    for _, stack in layer_stacks(model):
        for layer in stack:
            output = getattr(layer, "output", None)
            if output is not None and all(
                hasattr(output, part) for part in ("dense", "dropout", "LayerNorm")
            ):  # post-LN (BERT family)
                _pfeiffer_post_ln(output, make(out_features(output.dense)).to(device))
            elif isinstance(getattr(layer, "layer", None), nn.ModuleList):  # T5: its FF sub-layer
                ff = layer.layer[-1]
                _attach_to_output(ff, make(_width(ff)), device)
            else:  # pre-norm decoder layers (Llama, Gemma): the layer ends with the FFN residual
                _attach_to_output(layer, make(_width(layer)), device)


def _width(module: nn.Module) -> int:
    """The residual width written by a pre-norm sub-layer: its FFN output projection's."""
    return out_features(output_projections(module, "ffn")[-1][1])


def add_sequential_adapters(
    model: nn.Module, blocks: tuple[str, ...], make: Callable[[int], nn.Module]
) -> None:
    """Attaches ``make(width)`` after the output projection of each of ``blocks``."""
    for block in blocks:
        for _, projection in output_projections(model, block):
            attach_adapter(projection, make(out_features(projection)))


def add_parallel_adapters(model: nn.Module, cfg: Any) -> None:
    """Adds a scaled parallel adapter beside every feed-forward block (He et al. 2022)."""
    for entry, exit_ in ffn_pairs(model):
        adapter = ParallelAdapter(
            out_features(exit_),
            int(cfg.bottleneck),
            scale=float(cfg.scale),
            activation=str(cfg.activation),
        )
        attach_parallel(entry, exit_, adapter)


def _bottleneck(cfg: Any) -> Callable[[int], nn.Module]:
    return lambda width: BottleneckAdapter(
        width, int(cfg.bottleneck), activation=str(cfg.activation), init_std=float(cfg.init_std)
    )


def houlsby_adapters(model: nn.Module, cfg: Any, ctx: MethodContext) -> nn.Module:
    """Freezes the backbone; adds an adapter after each attention and FFN block and trains the
    layers' LayerNorms (Houlsby et al. 2019)."""
    freeze_all_but_head(model, ctx.head_modules)
    add_houlsby_adapters(model, _bottleneck(cfg))
    train_layer_norms(model)
    return model


def pfeiffer_adapters(model: nn.Module, cfg: Any, ctx: MethodContext) -> nn.Module:
    """Freezes the backbone and adds one adapter per layer in the Pfeiffer placement."""
    freeze_all_but_head(model, ctx.head_modules)
    add_pfeiffer_adapters(model, _bottleneck(cfg))
    return model


def parallel_adapters(model: nn.Module, cfg: Any, ctx: MethodContext) -> nn.Module:
    """Freezes the backbone and adds a scaled parallel adapter beside each FFN block."""
    freeze_all_but_head(model, ctx.head_modules)
    add_parallel_adapters(model, cfg)
    return model


def compacter_adapters(model: nn.Module, cfg: Any, ctx: MethodContext) -> nn.Module:
    """Freezes the backbone and adds PHM adapters (Houlsby placement) sharing one rule A."""
    freeze_all_but_head(model, ctx.head_modules)
    n = int(cfg.phm_dim)
    device = next(model.parameters()).device
    rule = nn.Parameter(torch.empty(n, n, n, device=device))
    nn.init.normal_(rule, std=float(cfg.get("phm_init_range", 1e-4)))  # modeling_t5.py L1555
    model.register_parameter("compacter_phm_rule", rule)
    add_sequential_adapters(
        model,
        ("attention", "ffn"),
        lambda width: PHMAdapter(
            rule, width, int(cfg.bottleneck), activation=str(cfg.activation), rank=int(cfg.phm_rank)
        ),
    )
    if cfg.get("unfreeze_layer_norms", False):
        train_all_norms(model, ctx.head_modules)
    return model
