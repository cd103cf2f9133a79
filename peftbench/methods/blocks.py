"""Find the attention and feed-forward blocks of a transformer, whatever its family.

Native methods insert modules at the *output projection* of each sub-layer (where Houlsby
adapters go), read the *input* of the feed-forward block (parallel adapters), wrap the query
and value projections (gated LoRA) or select whole layers (last_layers). The module names
differ per architecture; each pattern below matches one role for one family, so adding a
family is one pattern per role.
"""

from __future__ import annotations

import re

from torch import nn

_OUTPUT_PROJECTIONS: dict[str, list[str]] = {
    "attention": [
        r"attention\.output\.dense$",  # BERT, RoBERTa, MiniLM (encoder and decoder)
        r"self_attn\.o_proj$",  # Llama, Gemma, Mistral, Qwen
        r"SelfAttention\.o$",  # T5
        r"attn\.c_proj$",  # GPT-2
    ],
    "ffn": [
        r"layer\.\d+\.output\.dense$",  # BERT family (not attention.output.dense)
        r"mlp\.down_proj$",  # Llama, Gemma, Mistral, Qwen
        r"DenseReluDense\.wo$",  # T5
        r"mlp\.c_proj$",  # GPT-2
    ],
    # The first linear layer of the feed-forward block: its input is the block's input.
    "ffn_input": [
        r"layer\.\d+\.intermediate\.dense$",  # BERT family
        r"mlp\.gate_proj$",  # Llama, Gemma, Mistral, Qwen (up_proj reads the same input)
        r"DenseReluDense\.wi(_0)?$",  # T5 (wi_0 in gated variants)
    ],
    "query": [
        r"attention\.self\.query$",  # BERT family
        r"self_attn\.q_proj$",  # Llama, Gemma, Mistral, Qwen
        r"SelfAttention\.q$",  # T5
    ],
    "value": [
        r"attention\.self\.value$",  # BERT family
        r"self_attn\.v_proj$",  # Llama, Gemma, Mistral, Qwen
        r"SelfAttention\.v$",  # T5
    ],
}

#: The ModuleList that holds the transformer layers of one stack, per family.
_LAYER_STACKS = [
    r"encoder\.layer$",  # BERT family
    r"(^|\.)layers$",  # Llama, Gemma, Mistral, Qwen
    r"(encoder|decoder)\.block$",  # T5 (two stacks)
]


def output_projections(model: nn.Module, block: str) -> list[tuple[str, nn.Module]]:
    """Returns (name, module) of the output projection of every ``block`` sub-layer.

    Args:
        model: any transformers model (possibly wrapped).
        block: a role of ``_OUTPUT_PROJECTIONS``: "attention", "ffn" (output projections),
            "ffn_input", "query" or "value".

    Raises:
        ValueError: when no pattern matches, naming the model class, so that a new family
            fails loudly instead of silently training nothing.
    """
    return _matching(model, nn.Linear, _OUTPUT_PROJECTIONS[block], f"{block} output projection")


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
            f"no {what} found in {type(model).__name__}; add its pattern to "
            "peftbench/methods/blocks.py"
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
            "outputs; fix the patterns in peftbench/methods/blocks.py"
        )
    return list(zip(entries, exits, strict=True))


def layer_stacks(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Returns (name, ModuleList) of each stack of transformer layers (two in T5).

    Raises:
        ValueError: when no stack is found, naming the model class.
    """
    return _matching(model, nn.ModuleList, _LAYER_STACKS, "stack of transformer layers")
