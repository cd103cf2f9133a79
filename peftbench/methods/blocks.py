"""Find the attention and feed-forward blocks of a transformer, whatever its family.

Native methods insert modules at the *output projection* of each sub-layer (where Houlsby
adapters go). The projection's name differs per architecture; each pattern below matches the
last linear layer of a sub-layer for one family, so adding a family is one pattern.
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
}


def output_projections(model: nn.Module, block: str) -> list[tuple[str, nn.Module]]:
    """Returns (name, module) of the output projection of every ``block`` sub-layer.

    Args:
        model: any transformers model (possibly wrapped).
        block: "attention" or "ffn".

    Raises:
        ValueError: when no pattern matches, naming the model class, so that a new family
            fails loudly instead of silently training nothing.
    """
    patterns = [re.compile(p) for p in _OUTPUT_PROJECTIONS[block]]
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(p.search(name) for p in patterns)
    ]
    if not found:
        raise ValueError(
            f"no {block} output projection found in {type(model).__name__}; add its pattern "
            "to peftbench/methods/blocks.py"
        )
    return found


def out_features(module: nn.Module) -> int:
    """Width of the residual stream a projection writes to."""
    return module.out_features
