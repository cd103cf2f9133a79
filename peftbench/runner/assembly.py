"""The model a run trains, built in one order everywhere: task -> backbone -> data -> method.

:func:`load` reads the backbone with the task's head and encodes the splits; :func:`adapt`
applies the method (its budget fitted first, a calibrating method reading the first training
batches) and sets the precision. A run puts its forgetting probe's reference read between
the two, on the backbone as loaded; :func:`assemble` is both at once, for every other caller
(``peftbench costs``, tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from peftbench.runner.device import accelerate
from peftbench.runner.loaders import first_batches, make_loaders


@dataclass
class Loaded:
    """A backbone with the task's head, and the task's data loaders."""

    backbone: Any  # peftbench.models.backbones.Backbone: model, tokenizer, head modules
    loaders: dict[str, DataLoader]
    data_facts: dict  # truncation counts, cache hits and tokenize seconds per split
    context: Any  # peftbench.methods.MethodContext


@dataclass
class Adapted:
    """The backbone with its method applied, on its device, and how it computes."""

    model: torch.nn.Module
    autocast_dtype: torch.dtype | None
    budget: dict | None  # method.budget_pct: requested, reached, knob and its value


def method_context(
    backbone: Any, task: Any, train_loader: DataLoader, train_cfg: Any, device: torch.device
) -> Any:
    """What a method is told about the backbone, the task and the run it is applied to."""
    from peftbench.methods import MethodContext
    from peftbench.runner.train import total_steps

    return MethodContext(
        head_modules=backbone.head_modules,
        peft_task_type=task.peft_task_type,
        model_type=backbone.model.config.model_type,
        calibration_batches=partial(first_batches, train_loader, device),
        total_steps=total_steps(train_cfg, len(train_loader)),
    )


def load(
    cfg: Any, task: Any, device: torch.device, *, cache_dir: Path | None = None,
    on_part: Any = None,
) -> Loaded:  # fmt: skip
    """The backbone (``cfg.model``) with ``task``'s head, and the encoded splits.

    Args:
        cache_dir: where tokenized splits are cached (None: tokenize every time).
        on_part: called with ``"load_s"`` after the backbone, ``"data_s"`` after the data
            (a run's set-up clock); optional.
    """
    from peftbench.models.backbones import load_backbone

    part = on_part or (lambda _name: None)
    backbone = load_backbone(cfg.model, task)
    part("load_s")
    loaders, data_facts = make_loaders(
        task,
        backbone.tokenizer,
        cfg.train,
        seed=int(cfg.seed),
        cache_dir=cache_dir,
        pin_memory=device.type == "cuda",
    )
    part("data_s")
    context = method_context(backbone, task, loaders["train"], cfg.train, device)
    return Loaded(backbone, loaders, data_facts, context)


def adapt(loaded: Loaded, cfg: Any, device: torch.device, *, on_part: Any = None) -> Adapted:
    """Applies ``cfg.method`` to the loaded backbone (in place) and moves it to ``device``.

    A method's calibration (fisher_mask's per-example gradients) runs here: set-up time.
    """
    from peftbench.methods import apply_method
    from peftbench.methods.budget import fit_budget

    part = on_part or (lambda _name: None)
    model = loaded.backbone.model.to(device)
    method_cfg, budget = fit_budget(model, cfg.method, loaded.context)
    part("budget_s")
    model = apply_method(model, method_cfg, loaded.context).to(device)
    autocast_dtype = accelerate(model, device, cfg.train)
    part("method_s")
    return Adapted(model, autocast_dtype, budget)


def assemble(cfg: Any, task: Any, device: torch.device) -> tuple[Loaded, Adapted]:
    """:func:`load` then :func:`adapt`, with no cache and no clock."""
    loaded = load(cfg, task, device)
    return loaded, adapt(loaded, cfg, device)
