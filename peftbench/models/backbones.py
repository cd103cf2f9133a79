"""Backbones: a pretrained model with the task's head, from an offline asset or the Hub.

The offline path and the Hub path are the same ``from_pretrained`` call; only what it is
pointed at differs (a verified local folder vs a Hub id at a pinned revision).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftbench.models.architectures import head_module_names

PRETRAINED, SYNTHETIC = "pretrained", "synthetic"


@dataclass
class Backbone:
    model: nn.Module
    tokenizer: Any
    #: Top-level modules that are the task head (new or task-specific): always trained.
    head_modules: list[str]
    #: Where the weights came from: a local folder or "<hub id>@<revision>".
    source: str
    #: "pretrained" or "synthetic" (random init from config, for cost benchmarks only).
    weights: str


def _auto_class(head: str) -> type:
    import transformers

    classes = {
        "sequence_classification": transformers.AutoModelForSequenceClassification,
        "token_classification": transformers.AutoModelForTokenClassification,
        "seq2seq_lm": transformers.AutoModelForSeq2SeqLM,
        "causal_lm": transformers.AutoModelForCausalLM,
    }
    return classes[head]


def resolve_source(model_cfg: Any) -> tuple[str, dict, str]:
    """Returns (path or Hub id, from_pretrained kwargs, a printable source) for a model config.

    With ``source.gguf_file`` the GGUF file (in the asset, the local folder or the Hub repo)
    is dequantized once to an fp32 safetensors folder (``peftbench.models.gguf``) and that folder
    is returned, so GGUF models load like any other.
    """
    source = model_cfg.source
    if source.get("gguf_file"):
        from peftbench.models.gguf import dequantized_dir

        gguf = _gguf_path(source)
        return str(dequantized_dir(gguf)), {}, str(gguf)
    if source.get("asset"):
        from peftbench.assets import fetch

        path = str(fetch(source.asset))
        return path, {}, path
    if source.get("hub_id"):
        revision = source.get("revision") or "main"
        return source.hub_id, {"revision": revision}, f"{source.hub_id}@{revision}"
    if source.get("path"):
        return str(source.path), {}, str(source.path)
    raise ValueError(f"model {model_cfg.name!r}: source needs one of asset, hub_id or path")


def _gguf_path(source: Any) -> Path:
    """The local GGUF file named by ``source.gguf_file``: in the asset, the folder or the Hub."""
    name = str(source.gguf_file)
    if source.get("asset"):
        from peftbench.assets import fetch

        return fetch(source.asset) / name
    if source.get("hub_id"):
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(source.hub_id, name, revision=source.get("revision")))
    if source.get("path"):
        return Path(str(source.path)).expanduser() / name
    raise ValueError(f"source.gguf_file {name!r} needs one of asset, hub_id or path")


def _head_modules(model: nn.Module, missing_keys: list[str]) -> list[str]:
    """Top-level modules that are a task head: known head names plus anything newly created."""
    top = {name for name, _ in model.named_children()}
    names = {n for n in head_module_names() if n in top}
    names |= {key.split(".")[0] for key in missing_keys if key.split(".")[0] in top}
    return sorted(names)


# Printed on every run that passes labels, which is the intended way since transformers 4.12.
warnings.filterwarnings("ignore", message="Version v4.12.0 introduces", category=FutureWarning)

#: What ``from_encoder_decoder_pretrained`` creates new in a BERT-family decoder: every layer's
#: cross-attention and the LM head's transform. Every method trains them, like a task head.
WARM_START_HEADS = ["crossattention", "transform"]


def warm_start_encoder_decoder(where: str, kwargs: dict, tokenizer: Any) -> nn.Module:
    """An EncoderDecoderModel whose encoder and decoder both start from one pretrained encoder.

    Rothe et al. 2020 ("Leveraging Pre-trained Checkpoints for Sequence Generation Tasks"):
    the decoder is the encoder with causal self-attention, new cross-attention and an LM head
    tied to its word embeddings. The head's output bias is new as well but stays at zero: it
    lives beside the tied embeddings, which a head module would copy and train in full.
    The decoder starts from [CLS] and stops at [SEP], on ``config`` and ``generation_config``.
    """
    import transformers

    both = {f"{side}_{k}": v for k, v in kwargs.items() for side in ("encoder", "decoder")}
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the expected "newly initialised" report
    transformers.utils.logging.disable_progress_bar()
    try:
        model = transformers.EncoderDecoderModel.from_encoder_decoder_pretrained(
            where, where, encoder_use_safetensors=True, decoder_use_safetensors=True, **both
        )
    finally:
        transformers.logging.set_verbosity(verbosity)
    ids = {
        "decoder_start_token_id": tokenizer.cls_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.sep_token_id,
    }
    for config in (model.config, model.generation_config):
        for key, value in ids.items():
            setattr(config, key, value)
    return model.float()


def attention_kwargs(model_cfg: Any) -> dict:
    """``attn_implementation`` for transformers when ``model.attn_implementation`` names one.

    The kernel changes speed, not the arithmetic it stands for: on a CPU, training MiniLM-L6
    on 256-token batches in bf16 took 1.3-1.5x as long per step with SDPA (its math
    fallback, with a separate dropout mask) as with the eager kernel (docs/PERFORMANCE.md).
    """
    name = model_cfg.get("attn_implementation")
    return {"attn_implementation": str(name)} if name else {}


def load_backbone(model_cfg: Any, task: Any) -> Backbone:
    """Loads tokenizer and model with the task's head; weights only from safetensors or GGUF.

    ``model.weights: synthetic`` builds the architecture from the config with random weights
    instead (cost benchmarks only; records say so and quality tables leave them out).
    """
    import transformers

    if str(model_cfg.get("weights") or PRETRAINED) == SYNTHETIC:
        return _synthetic_backbone(model_cfg, task)
    where, kwargs, printable = resolve_source(model_cfg)
    tokenizer = transformers.AutoTokenizer.from_pretrained(where, **kwargs)
    task.tokenizer = tokenizer  # generative tasks decode predictions with it
    kwargs = {**kwargs, **attention_kwargs(model_cfg)}  # the model's, not the tokenizer's
    if model_cfg.get("warm_start") == "encoder_decoder":
        model = warm_start_encoder_decoder(where, kwargs, tokenizer)
        return Backbone(model, tokenizer, WARM_START_HEADS, printable, "pretrained")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the expected "head newly initialised" report
    transformers.utils.logging.disable_progress_bar()
    try:
        model, info = _auto_class(task.head).from_pretrained(
            where,
            **kwargs,
            **task.model_kwargs(),
            use_safetensors=True,
            trust_remote_code=bool(model_cfg.get("trust_remote_code", False)),
            output_loading_info=True,
            dtype=torch.float32,
        )
    finally:
        transformers.logging.set_verbosity(verbosity)
    _share_pad_token(tokenizer, model, model_cfg)
    return Backbone(
        model=model,
        tokenizer=tokenizer,
        head_modules=_head_modules(model, info.get("missing_keys", [])),
        source=printable,
        weights=PRETRAINED,
    )


def _share_pad_token(tokenizer: Any, model: nn.Module, model_cfg: Any) -> None:
    """Decoders often lack a pad token: use <eos> (padding is masked anyway). The model needs
    the id too: a decoder's sequence-classification head reads the last non-pad token, found
    from ``input_ids``. Prompt tuning and P-tuning pass ``inputs_embeds`` instead, and the
    head then reads the last position: with right padding a pad token in every row shorter
    than its batch. Decoders' configs therefore pad on the left (``model.padding_side``)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    if side := model_cfg.get("padding_side"):
        tokenizer.padding_side = side


def _synthetic_backbone(model_cfg: Any, task: Any) -> Backbone:
    """A real architecture at real size with random weights: no weights are read.

    ``model.architecture`` holds ``model_type`` and the config fields (e.g. Llama 3.2 1B);
    the tokenizer comes from ``model.source``. Throughput and memory are real, scores are not.
    """
    import transformers
    from omegaconf import DictConfig, OmegaConf

    where, kwargs, printable = resolve_source(model_cfg)
    tokenizer = transformers.AutoTokenizer.from_pretrained(where, **kwargs)
    task.tokenizer = tokenizer  # generative tasks decode predictions with it
    architecture = model_cfg.architecture
    if isinstance(architecture, DictConfig):
        architecture = OmegaConf.to_container(architecture, resolve=True)
    fields = dict(architecture)
    model_type = fields.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **fields, **task.model_kwargs())
    model = _auto_class(task.head).from_config(
        config, dtype=torch.float32, **attention_kwargs(model_cfg)
    )
    _share_pad_token(tokenizer, model, model_cfg)
    if len(tokenizer) > config.vocab_size:
        _clip_token_ids(model)
    return Backbone(
        model=model,
        tokenizer=tokenizer,
        head_modules=_head_modules(model, []),
        source=f"synthetic {model_type} (tokenizer: {printable})",
        weights=SYNTHETIC,
    )


def _clip_token_ids(model: nn.Module) -> None:
    """Maps token ids beyond the embedding table to its last row: a borrowed tokenizer may
    be larger than the synthetic architecture's vocabulary (the cost is the same)."""
    embeddings = model.get_input_embeddings()
    last = embeddings.num_embeddings - 1
    embeddings.register_forward_pre_hook(lambda _, args: (args[0].clamp(max=last), *args[1:]))
