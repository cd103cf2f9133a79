"""Find the attention and feed-forward blocks of a transformer, whatever its architecture.

Native methods insert modules at the *output projection* of each sub-layer (where Houlsby
adapters go), read the *input* of the feed-forward block (parallel adapters), wrap the query
and value projections (gated LoRA) or select whole layers (last_layers). The module names
differ per architecture; they are declared in :data:`peftbench.models.architectures.ARCHITECTURES`
(one entry per architecture, one pattern per role), and matched here.
"""

from __future__ import annotations

import re

from torch import nn

from peftbench.models.architectures import block_patterns, layer_stack_patterns


def output_projections(model: nn.Module, block: str) -> list[tuple[str, nn.Module]]:
    """Returns (name, module) of the output projection of every ``block`` sub-layer.

    Args:
        model: any transformers model (possibly wrapped).
        block: a role of :data:`peftbench.models.architectures.ROLES`: "attention", "ffn" (output
            projections), "ffn_input", "query" or "value".

    Raises:
        ValueError: when no pattern matches, naming the model class, so that a new family
            fails loudly instead of silently training nothing.
    """
    return _matching(model, nn.Linear, block_patterns(block), f"{block} output projection")


def _matching(
    model: nn.Module, kind: type[nn.Module], patterns: list[str], what: str
) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs of ``kind`` whose name matches a pattern; none is an error."""
    compiled = [re.compile(p) for p in patterns]
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, kind) and any(p.search(name) for p in compiled)
    ]
    if not found:
        raise ValueError(
            f"no {what} found in {type(model).__name__}; add its architecture's pattern to "
            "peftbench/models/architectures.py"
        )
    return found


def out_features(module: nn.Module) -> int:
    """Width of the residual stream a projection writes to."""
    return module.out_features


def ffn_pairs(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """Returns (first linear, output projection) of every feed-forward block, layer by layer.

    A parallel adapter reads the block's input (the first linear's input) and adds to its
    output (the output projection's output).
    """
    entries = [m for _, m in output_projections(model, "ffn_input")]
    exits = [m for _, m in output_projections(model, "ffn")]
    if len(entries) != len(exits):
        raise ValueError(
            f"{type(model).__name__}: {len(entries)} feed-forward inputs but {len(exits)} "
            "outputs; fix its patterns in peftbench/models/architectures.py"
        )
    return list(zip(entries, exits, strict=True))


def layer_stacks(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Returns (name, ModuleList) of each stack of transformer layers (two in T5).

    Raises:
        ValueError: when no stack is found, naming the model class.
    """
    return _matching(model, nn.ModuleList, layer_stack_patterns(), "stack of transformer layers")
