"""The one method interface shared by peft-backed and native methods."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from peftbench.methods.specs import spec

#: Name of the optional model attribute holding ``hook(step)``, which the training loop calls
#: after every optimiser step and before gradients are cleared (AdaLoRA re-allocates its rank
#: budget there from the gradients). A method that needs no per-step work sets nothing.
STEP_HOOK_ATTR = "peftbench_step_hook"

#: Name of the optional model attribute holding the first (1-based) step whose dev score may
#: be selected as the best checkpoint. AdaLoRA sets it to the step its final rank budget is
#: reached: an earlier snapshot holds more than ``target_r`` ranks, which is not the method
#: the paper evaluates (its model is the one at the end of the budget schedule).
SELECT_FROM_ATTR = "peftbench_select_from_step"

#: Name of the optional model attribute holding facts a method found while it was applied,
#: for the record's ``params`` section (fisher_mask: ``mask_by_module``, where its mask lies).
PARAMS_FACTS_ATTR = "peftbench_params_facts"

#: Name of the optional model attribute holding the method's training state that lives
#: outside the model's tensors (AdaLoRA: its importance averages and final rank pattern), as
#: an object with ``state_dict()`` / ``load_state_dict()``. A checkpoint saves it, and a
#: checkpoint without it is not resumed: the run would go on from a different state.
CHECKPOINT_STATE_ATTR = "peftbench_checkpoint_state"


class MethodNotApplicable(ValueError):
    """A method cannot be applied to this model, task or machine (a config error, not a bug).

    The message names the method and the reason in one line; callers show it without a
    traceback.
    """


@dataclass(frozen=True)
class MethodContext:
    """What a method needs to know about the backbone and task it is applied to."""

    head_modules: list[str]  # always trained, whatever the method
    peft_task_type: str  # e.g. "SEQ_CLS"
    model_type: str  # transformers' config.model_type, e.g. "bert", "llama"
    #: ``calibration_batches(n)`` yields up to ``n`` training batches (dicts of tensors with
    #: labels, on the model's device); for data-dependent methods such as fisher_mask.
    calibration_batches: Callable[[int], Iterable[dict]] | None = None
    #: How many optimiser steps the run will take (AdaLoRA schedules its budget over them).
    total_steps: int | None = None


def apply_method(model: nn.Module, cfg: Any, ctx: MethodContext) -> nn.Module:
    """Applies the method named by ``cfg.kind``; afterwards exactly its parameters train."""
    return spec(cfg.kind).applier()(model, cfg, ctx)


def freeze_all_but_head(model: nn.Module, head_modules: list[str]) -> None:
    """Freezes the backbone and leaves the task head trainable (native methods start here)."""
    for name, param in model.named_parameters():
        param.requires_grad = is_head_param(name, head_modules)


def is_head_param(name: str, head_modules: list[str]) -> bool:
    """Whether a parameter belongs to the task head, also inside peft's wrappers.

    peft prefixes names with ``base_model.model.`` and keeps trained copies of the head under
    ``modules_to_save``; a component named like a head module anywhere in the path counts.
    """
    return any(part in head_modules for part in name.split("."))


def count_params(model: nn.Module, keep: Callable[[str, nn.Parameter], bool] | None = None) -> int:
    """Scalars of the parameters ``keep(name, param)`` accepts (all of them by default).

    The one parameter count of the harness: records, budgets and the Fisher mask count with
    it, and tell the head from the backbone with :func:`is_head_param` only.
    """
    return sum(p.numel() for n, p in model.named_parameters() if keep is None or keep(n, p))


def backbone_size(model: nn.Module, head_modules: list[str]) -> int:
    """Parameters of the backbone, task head excluded: the base of every budget."""
    return count_params(model, lambda name, _: not is_head_param(name, head_modules))


def count_trainable(model: nn.Module, head_modules: list[str]) -> tuple[int, int]:
    """Scalars trained by the method and by the task head: ``(method, head)``.

    Every method trains whole tensors (a sparse method trains a tensor of its selected
    entries), so ``requires_grad`` is the exact count.
    """
    trainable = count_params(model, lambda _, p: p.requires_grad)
    head = count_params(model, lambda n, p: p.requires_grad and is_head_param(n, head_modules))
    return trainable - head, head


def prompt_reparametrisation(model: nn.Module) -> int:
    """Scalars trained only to produce a prompt, and dropped once it is produced.

    A prompt encoder with a reparametrisation (Li & Liang's prefix MLP, as MAM and UniPELT
    train theirs; P-tuning's MLP) trains more scalars than the prompt it outputs, and only
    that output is kept after training (it is what peft saves:
    ``PeftModel.get_prompt_embedding_to_save``). Returns trained minus kept over every prompt
    encoder of ``model``: 0 for every other method, and for a prompt trained directly.
    """
    from peft import PeftModel

    overhead = 0
    for module in model.modules():
        if not isinstance(module, PeftModel) or not module.peft_config:
            continue
        for name, encoder in (getattr(module, "prompt_encoder", None) or {}).items():
            trained = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
            if trained:
                with torch.no_grad():
                    kept = module.get_prompt_embedding_to_save(name).numel()
                overhead += trained - kept
    return overhead


def step_hook(model: nn.Module) -> Callable[[int], None] | None:
    """The per-step hook a method installed on ``model``, if any (see :data:`STEP_HOOK_ATTR`)."""
    return getattr(model, STEP_HOOK_ATTR, None)


def checkpoint_state(model: nn.Module) -> Any:
    """The method state a checkpoint must carry, if any (see :data:`CHECKPOINT_STATE_ATTR`)."""
    return getattr(model, CHECKPOINT_STATE_ATTR, None)


def select_from_step(model: nn.Module) -> int:
    """The first step dev selection may pick on ``model`` (see :data:`SELECT_FROM_ATTR`)."""
    return int(getattr(model, SELECT_FROM_ATTR, 0) or 0)


def params_facts(model: nn.Module) -> dict:
    """What the method recorded about itself on ``model`` (see :data:`PARAMS_FACTS_ATTR`)."""
    return dict(getattr(model, PARAMS_FACTS_ATTR, None) or {})


def merge(model: nn.Module, cfg: Any) -> nn.Module:
    """Folds a mergeable method into the backbone weights and returns the plain model.

    Raises:
        MethodNotApplicable: when the method's YAML does not declare ``mergeable: true``.
    """
    if not cfg.get("mergeable", False):
        raise MethodNotApplicable(f"method {cfg.name!r} cannot be merged into the backbone")
    return model.merge_and_unload()


def trainable_state(model: nn.Module) -> dict:
    """What a method adds or changes: trainable tensors and method buffers, by name.

    Method buffers are those of modules that set ``saves_buffers = True`` (e.g. the positions
    of a sparse mask): without them the trained values could not be put back in place.
    """
    state = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    for name, module in model.named_modules():
        if getattr(module, "saves_buffers", False):
            for buffer_name, buffer in module.named_buffers(recurse=False):
                state[f"{name}.{buffer_name}"] = buffer.detach().contiguous()
    return state


def save_trainable(model: nn.Module, path: Path) -> int:
    """Saves the trainable state as safetensors and returns its size in bytes."""
    save_file(trainable_state(model), str(path))
    return path.stat().st_size


def load_trainable(model: nn.Module, path: Path) -> None:
    """Loads a state saved by :func:`save_trainable` into a model the method was applied to.

    Raises:
        KeyError: a saved tensor matches no parameter or buffer of ``model``.
        ValueError: a saved tensor has another shape (e.g. a sparse mask chose other entries).
    """
    state = load_file(str(path))
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    missing = set(state) - set(tensors)
    if missing:
        raise KeyError(f"{path}: {len(missing)} tensors match no parameter, e.g. {min(missing)}")
    for name, tensor in state.items():
        if tensors[name].shape != tensor.shape:
            raise ValueError(
                f"{path}: {name} has shape {tuple(tensor.shape)}, model has "
                f"{tuple(tensors[name].shape)}"
            )
        tensors[name].data.copy_(tensor)
