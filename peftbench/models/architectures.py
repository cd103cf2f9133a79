"""What the harness knows about model architectures and families, in one place.

Two axes, each one table:

- :data:`FAMILIES`, the ``model.family`` of a model YAML (encoder, decoder, encoder_decoder):
  which task kinds a family cannot serve. Checked at config time.
- :data:`ARCHITECTURES`, one entry per transformer architecture: the module-name patterns of
  the blocks native methods edit, the stack of layers, the task-head module names, and the
  peft targets the harness chooses where peft has no (or a different) default.

Adding an architecture is one :class:`Architecture` entry. This module is pure data (no torch),
so the config check reads it without loading anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# --------------------------------------------------------------------------- families


@dataclass(frozen=True)
class Family:
    """A ``model.family``: what its models cannot do whatever the method.

    Attributes:
        refuses: task kinds no model of the family serves (an encoder writes no text).
    """

    refuses: tuple[str, ...] = ()


FAMILIES: dict[str, Family] = {
    "encoder": Family(refuses=("translation",)),
    # text-to-text writes one label per input, not one per token
    "encoder_decoder": Family(refuses=("token_classification",)),
    "decoder": Family(),
}


def families_serving(task_kind: str) -> list[str]:
    """The families whose models can serve ``task_kind``, in :data:`FAMILIES` order."""
    return [name for name, family in FAMILIES.items() if task_kind not in family.refuses]


# --------------------------------------------------------------------------- architectures

#: Roles a native method looks up (:func:`peftbench.methods.blocks.output_projections`):
#: the output projections of the attention and feed-forward sub-layers (where Houlsby adapters
#: go), the feed-forward's first linear (its input is the block's input: parallel adapters),
#: and the query and value projections (gated LoRA).
ROLES = ("attention", "ffn", "ffn_input", "query", "value")


@dataclass(frozen=True)
class Architecture:
    """Where one transformer architecture keeps what the methods touch.

    Attributes:
        name: for messages and docs.
        model_types: transformers' ``config.model_type`` values the per-type facts below
            (``peft_targets``, ``ia3_targets``) apply to. Block and head names are matched
            by pattern against every model, whatever its type.
        blocks: role (one of :data:`ROLES`) -> regex searched in module names; a role the
            architecture lacks is absent (GPT-2's fused attention has no query projection).
        layer_stack: regex of the ModuleList holding one stack's layers (None: not known).
        head_modules: top-level module names of its task heads; every method trains them.
        peft_targets: peft ``target_modules`` where peft has no default for these types.
        ia3_targets: (target_modules, feedforward_modules) of (IA)^3 as its paper places it.
        layer_linear: regex (peft full-matches it) of every linear layer inside the
            transformer layers: attention projections and feed-forward, not the pooler or
            the head; what a method YAML asks for with ``target_modules: layer-linear``.
    """

    name: str
    model_types: tuple[str, ...]
    blocks: Mapping[str, str]
    layer_stack: str | None = None
    head_modules: tuple[str, ...] = ()
    peft_targets: str | None = None
    ia3_targets: tuple[str, str] | None = None
    layer_linear: str | None = None


_BERT_BLOCKS = {
    "attention": r"attention\.output\.dense$",
    "ffn": r"layer\.\d+\.output\.dense$",  # not attention.output.dense
    "ffn_input": r"layer\.\d+\.intermediate\.dense$",
    "query": r"attention\.self\.query$",
    "value": r"attention\.self\.value$",
}
#: Liu et al. 2022 rescale the keys, the values and the feed-forward's intermediate activation:
#: l_k (d), l_v (d) and l_ff (d_ff, the input of the FFN's second linear), d + d + d_ff per
#: layer (2,304 on MiniLM-L6: 384 + 384 + 1536). peft's own BERT default ("key", "value",
#: "output.dense") also matches ``attention.output.dense`` by suffix and rescales its input
#: too (d more per layer). Regexes peft full-matches against module names.
_BERT_IA3 = (
    r".*layer\.\d+\.(attention\.self\.(key|value)|output\.dense)",
    r".*layer\.\d+\.output\.dense",
)

#: Query, key, value, attention output, intermediate and layer output of every BERT layer: the
#: six AdaLoRA adapts (QingruZhang/AdaLoRA NLU/scripts/run_debertav3_*.sh L10:
#: ``--lora_module query,key,value,intermediate,layer.output,attention.output``). The
#: ``layer.<i>.`` anchor leaves out the warm-started decoder's crossattention (a head module).
_BERT_LAYER_LINEAR = (
    r".*layer\.\d+\.(attention\.(self\.(query|key|value)|output\.dense)"
    r"|intermediate\.dense|output\.dense)"
)

ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        "BERT family (BERT, RoBERTa, MiniLM)",
        ("bert", "roberta", "xlm-roberta"),
        _BERT_BLOCKS,
        layer_stack=r"encoder\.layer$",
        head_modules=("classifier", "qa_outputs"),
        ia3_targets=_BERT_IA3,
        layer_linear=_BERT_LAYER_LINEAR,
    ),
    Architecture(
        "warm-started encoder-decoder (two BERT stacks)",
        ("encoder-decoder",),
        _BERT_BLOCKS,
        layer_stack=r"encoder\.layer$",
        # the self-attention query and value of both stacks (peft's BERT default); the new
        # cross-attention is a head module (models.WARM_START_HEADS) and trains whole
        peft_targets=r".*(?<!cross)attention\.self\.(query|value)",
        ia3_targets=_BERT_IA3,
        layer_linear=_BERT_LAYER_LINEAR,
    ),
    Architecture(
        "Llama family (Llama, Gemma, Mistral, Qwen)",
        ("llama", "gemma", "gemma3_text", "mistral", "qwen2"),
        {
            "attention": r"self_attn\.o_proj$",
            "ffn": r"mlp\.down_proj$",
            "ffn_input": r"mlp\.gate_proj$",  # up_proj reads the same input
            "query": r"self_attn\.q_proj$",
            "value": r"self_attn\.v_proj$",
        },
        layer_stack=r"(^|\.)layers$",
        head_modules=("score", "qa_outputs"),
        layer_linear=r".*layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)",
    ),
    Architecture(
        "T5",
        ("t5", "mt5"),
        {
            "attention": r"SelfAttention\.o$",
            "ffn": r"DenseReluDense\.wo$",
            "ffn_input": r"DenseReluDense\.wi(_0)?$",  # wi_0 in gated variants
            "query": r"SelfAttention\.q$",
            "value": r"SelfAttention\.v$",
        },
        layer_stack=r"(encoder|decoder)\.block$",  # two stacks
        layer_linear=(
            r".*block\.\d+\.layer\.\d+\.((SelfAttention|EncDecAttention)\.(q|k|v|o)"
            r"|DenseReluDense\.(wi|wi_0|wi_1|wo))"
        ),
    ),
    Architecture("GPT-2", ("gpt2",), {"attention": r"attn\.c_proj$", "ffn": r"mlp\.c_proj$"}),
)


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def block_patterns(role: str) -> list[str]:
    """Every architecture's pattern for ``role`` (a module matching any one plays it)."""
    if role not in ROLES:
        raise KeyError(f"unknown block role {role!r}; roles: {', '.join(ROLES)}")
    return _unique([a.blocks[role] for a in ARCHITECTURES if role in a.blocks])


def layer_stack_patterns() -> list[str]:
    return _unique([a.layer_stack for a in ARCHITECTURES if a.layer_stack])


def head_module_names() -> tuple[str, ...]:
    """Top-level module names that hold a task head in any architecture."""
    return tuple(_unique([n for a in ARCHITECTURES for n in a.head_modules]))


def for_model_type(model_type: str) -> Architecture | None:
    """The architecture whose per-type facts apply to ``model_type`` (None: no entry)."""
    return next((a for a in ARCHITECTURES if model_type in a.model_types), None)
