"""The one method interface shared by peft-backed and native methods."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from peftbench.registry import Registry

#: kind (the ``kind`` key of conf/method/*.yaml) -> function(model, cfg, ctx) -> model.
METHOD_KINDS: Registry[Callable[..., nn.Module]] = Registry("method kind")


@dataclass(frozen=True)
class MethodContext:
    """What a method needs to know about the backbone and task it is applied to."""

    head_modules: list[str]  # always trained, whatever the method
    peft_task_type: str  # e.g. "SEQ_CLS"
    model_type: str  # transformers' config.model_type, e.g. "bert", "llama"


def apply_method(model: nn.Module, cfg: Any, ctx: MethodContext) -> nn.Module:
    """Applies the method named by ``cfg.kind``; afterwards exactly its parameters train."""
    return METHOD_KINDS.get(cfg.kind)(model, cfg, ctx)


def freeze_all_but_head(model: nn.Module, head_modules: list[str]) -> None:
    """Freezes the backbone and leaves the task head trainable (native methods start here)."""
    for name, param in model.named_parameters():
        param.requires_grad = name.split(".")[0] in head_modules


def trainable_state(model: nn.Module) -> dict:
    """The trainable tensors by parameter name: what a method adds or changes."""
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_trainable(model: nn.Module, path: Path) -> int:
    """Saves the trainable state as safetensors and returns its size in bytes."""
    save_file(trainable_state(model), str(path))
    return path.stat().st_size


def load_trainable(model: nn.Module, path: Path) -> None:
    """Loads a state saved by :func:`save_trainable` into a model the method was applied to."""
    state = load_file(str(path))
    params = dict(model.named_parameters())
    missing = set(state) - set(params)
    if missing:
        raise KeyError(f"{path}: {len(missing)} tensors match no parameter, e.g. {min(missing)}")
    for name, tensor in state.items():
        params[name].data.copy_(tensor)
