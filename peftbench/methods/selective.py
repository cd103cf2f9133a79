"""Selective methods: train a chosen subset of the backbone's own parameters (peft has none).

- ``bitfit``: Ben Zaken et al. 2022, "BitFit: Simple Parameter-efficient Fine-tuning for
  Transformer-based Masked Language-models": only the bias terms (and the task head) train.
- ``last_layers``: the top ``k`` transformer layers of each stack train (the classic partial
  fine-tuning baseline, e.g. Howard & Ruder 2018; Lee et al. 2019 "What would Elsa do?").
- ``fisher_mask``: Sung et al. 2021, "Training Neural Networks with Fixed Sparse Masks"
  (FISH mask): the ``k`` entries with the largest empirical Fisher information, estimated
  from per-example squared gradients on the first ``calibration_examples`` training examples
  (the reference's 1,024), train; the rest stay fixed. Every backbone tensor competes, the
  pooler included; the task head trains whole outside the mask (the reference's rule,
  varunnair18/FISH run_glue_sparse_update.py L186-190). Where the mask lies is recorded
  (``params.mask_by_module``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from peftbench.methods.base import (
    PARAMS_FACTS_ATTR,
    MethodContext,
    MethodNotApplicable,
    backbone_size,
    freeze_all_but_head,
    is_head_param,
)
from peftbench.methods.blocks import layer_stacks


def bitfit(model: nn.Module, cfg: Any, ctx: MethodContext) -> nn.Module:
    """Trains the bias terms of the backbone (every ``*.bias``) and the task head.

    Raises:
        MethodNotApplicable: when the backbone has no bias terms (Llama, Gemma and T5 have
            none), since training the head alone would silently be the ``linear`` baseline.
    """
    freeze_all_but_head(model, ctx.head_modules)
    biases = [
        p
        for n, p in model.named_parameters()
        if n.endswith("bias") and not is_head_param(n, ctx.head_modules)
    ]
    if not biases:
        raise MethodNotApplicable(
            f"method {cfg.name!r} (BitFit) needs bias terms, but {type(model).__name__} "
            f"({ctx.model_type}) has none"
        )
    for param in biases:
        param.requires_grad = True
    return model


def last_layers(model: nn.Module, cfg: Any, ctx: MethodContext) -> nn.Module:
    """Trains the top ``cfg.k`` layers of every layer stack (encoder and decoder in T5)."""
    freeze_all_but_head(model, ctx.head_modules)
    k = int(cfg.k)
    for name, stack in layer_stacks(model):
        if not 0 < k <= len(stack):
            raise MethodNotApplicable(
                f"method {cfg.name!r}: k={k}, but {name} has {len(stack)} layers"
            )
        for layer in stack[len(stack) - k :]:
            layer.requires_grad_(True)
    return model


class SparseDelta(nn.Module):
    """Adds trainable values at fixed flat positions of a frozen tensor (a FISH mask).

    Registered as a parametrisation: the module's tensor becomes ``original + scatter(values)``,
    so only the ``k`` selected entries can change and weight decay pulls them back towards the
    pretrained value, never the unselected ones.
    """

    saves_buffers = True  # the positions are part of the trained state (see trainable_state)

    def __init__(self, index: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("index", index)
        self.values = nn.Parameter(torch.zeros(index.numel(), device=index.device))

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        flat = original.reshape(-1).index_add(0, self.index, self.values.to(original.dtype))
        return flat.view_as(original)


def empirical_fisher(
    model: nn.Module, batches: Iterable[dict], params: dict[str, nn.Parameter]
) -> dict[str, torch.Tensor]:
    """Sums per-example squared gradients of the loss (with the true labels) over ``batches``.

    Per example, not per batch: the empirical Fisher is the mean of squared per-example
    gradients, and squaring a batch gradient would let examples cancel out.
    """
    scores = {name: torch.zeros_like(p) for name, p in params.items()}
    was_training = model.training
    model.eval()  # no dropout: the scores describe the pretrained model itself
    for batch in batches:
        size = len(batch["labels"])
        for i in range(size):
            example = {k: v[i : i + 1] for k, v in batch.items()}
            model.zero_grad(set_to_none=True)
            model(**example).loss.backward()
            for name, p in params.items():
                if p.grad is not None:
                    scores[name] += p.grad.detach() ** 2
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return scores


def top_k_masks(scores: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Flat indices, per tensor, of the ``k`` largest scores across all tensors."""
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    k = min(k, flat.numel())
    threshold_index = torch.topk(flat, k, sorted=False).indices
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    chosen[threshold_index] = True
    masks, start = {}, 0
    for name, s in scores.items():
        part = chosen[start : start + s.numel()]
        start += s.numel()
        if part.any():
            masks[name] = part.nonzero().squeeze(1)
    return masks


def fisher_k(cfg: Any, n_eligible: int) -> int:
    """How many entries the mask keeps: ``density_pct`` percent of the backbone's parameters."""
    return max(1, round(float(cfg.density_pct) / 100.0 * n_eligible))


def fisher_mask_size(model: nn.Module, cfg: Any, ctx: MethodContext) -> int:
    """The mask's exact size without estimating the Fisher (budget matching's analytic size)."""
    return fisher_k(cfg, backbone_size(model, ctx.head_modules))


def calibration_data(ctx: MethodContext, examples: int) -> list[dict]:
    """The first ``examples`` training examples as batches (the last one cut to fit).

    Fewer when the train split is smaller: the loader ends after one pass, so the whole split
    is read (the reference reads ``num_samples`` examples one at a time, or all of them).
    """
    first = list(ctx.calibration_batches(1))
    if not first:
        return []
    per_batch = len(first[0]["labels"])
    batches, left = [], examples
    for batch in ctx.calibration_batches(math.ceil(examples / per_batch)):
        size = min(left, len(batch["labels"]))
        batches.append({k: v[:size] for k, v in batch.items()})
        left -= size
        if left <= 0:
            break
    return batches


def module_group(name: str, stacks: list[tuple[str, int]]) -> str:
    """Where a backbone tensor lives: ``embeddings``, ``layer.<i>``, ``pooler`` or ``other``.

    With several stacks (T5's encoder and decoder) a layer is named by its stack's path.
    """
    for stack, _ in stacks:
        if name.startswith(stack + "."):
            index = name[len(stack) + 1 :].split(".")[0]
            return f"layer.{index}" if len(stacks) == 1 else f"{stack}.{index}"
    parts = name.split(".")
    if any("embed" in part for part in parts):
        return "embeddings"
    return "pooler" if "pooler" in parts else "other"


def mask_by_module(
    model: nn.Module, masks: dict[str, torch.Tensor], eligible: Iterable[str]
) -> dict[str, float]:
    """Share of the masked entries in the embeddings, each layer, the pooler and the head.

    Every group of the ``eligible`` (backbone) tensors is listed, in model order, even when
    the mask left it empty. The head's share is 0 by construction (it trains whole, outside
    the mask); it is listed so a record says so instead of leaving the reader to guess.
    """
    try:
        stacks = [(name, len(stack)) for name, stack in layer_stacks(model)]
    except ValueError:  # an architecture without a known layer stack: no per-layer split
        stacks = []
    counts = {module_group(name, stacks): 0 for name in eligible}
    for name, index in masks.items():
        counts[module_group(name, stacks)] += index.numel()
    total = sum(counts.values()) or 1
    return {group: round(n / total, 6) for group, n in counts.items()} | {"head": 0.0}


def fisher_mask(model: nn.Module, cfg: Any, ctx: MethodContext) -> nn.Module:
    """Trains the top-k empirical-Fisher entries of the backbone, plus the task head.

    Raises:
        MethodNotApplicable: without ``ctx.calibration_batches`` (the method needs data).
    """
    if ctx.calibration_batches is None:
        raise MethodNotApplicable(
            f"method {cfg.name!r} needs training batches to estimate the Fisher information, "
            "and none were given (MethodContext.calibration_batches)"
        )
    params = {n: p for n, p in model.named_parameters() if not is_head_param(n, ctx.head_modules)}
    for p in model.parameters():
        p.requires_grad = True  # the head too: its gradients flow into the backbone's
    data = calibration_data(ctx, int(cfg.calibration_examples))
    scores = empirical_fisher(model, data, params)
    masks = top_k_masks(scores, fisher_k(cfg, backbone_size(model, ctx.head_modules)))
    freeze_all_but_head(model, ctx.head_modules)
    shares = mask_by_module(model, masks, params)
    setattr(model, PARAMS_FACTS_ATTR, {"mask_by_module": shares})
    modules = dict(model.named_modules())
    for name, index in masks.items():
        owner, _, attr = name.rpartition(".")
        parametrize.register_parametrization(modules[owner], attr, SparseDelta(index))
    return model
