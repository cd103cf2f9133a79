"""Every method kind in one explicit list: the code that applies it and what it cannot do.

A method is two things. Its YAML (``conf/method/<name>.yaml``) is the method as its paper
configures it: the ``kind``, the hyper-parameters and cited ``lr``, whether it merges
(``mergeable``), its size knob (``budget_knob``) and what it needs of the machine and model
(``requires``). Its kind, declared here, is the code behind it and the facts that code
implies: the function that applies it, whether it trains a task head only, an exact size
without a dry run. Every peft method shares the kind ``peft``; what differs between peft
types (prompt learning, virtual tokens) is in :data:`PEFT_TYPES`.

This module is pure data (no torch): the config check (:mod:`peftbench.config.checks`) reads it
before anything is loaded, and the functions are imported only when a run applies a method.
Adding a native method is one function in a module of this package and one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from peftbench.errors import closest


def _resolve(path: str) -> Callable[..., Any]:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class MethodSpec:
    """One method kind (the ``kind`` key of a method YAML).

    Attributes:
        kind: the name YAMLs use.
        apply: ``"module:function"``; ``function(model, cfg, ctx)`` returns the model with
            exactly the method's parameters (and the task head) trainable.
        head_only: the kind trains a task head and nothing else, so it is refused where the
            model writes its output with its LM head (generation, text-to-text).
        analytic_size: ``"module:function"`` giving the exact trainable size
            ``function(model, cfg, ctx)`` without applying the method, where a dry run is
            expensive (budget matching sizes the method many times).
    """

    kind: str
    apply: str
    head_only: bool = False
    analytic_size: str | None = None

    def applier(self) -> Callable[..., Any]:
        return _resolve(self.apply)

    def sizer(self) -> Callable[..., int] | None:
        return _resolve(self.analytic_size) if self.analytic_size else None


_M = "peftbench.methods."

METHOD_SPECS: tuple[MethodSpec, ...] = (
    MethodSpec("full", _M + "baselines:full_finetuning"),
    MethodSpec("linear", _M + "baselines:linear_probe", head_only=True),
    MethodSpec("peft", _M + "peft_backend:peft_method"),
    MethodSpec("qlora", _M + "quantized:qlora"),
    MethodSpec("bitfit", _M + "selective:bitfit"),
    MethodSpec("last_layers", _M + "selective:last_layers"),
    MethodSpec(
        "fisher_mask",
        _M + "selective:fisher_mask",
        # the mask keeps exactly k entries; estimating the Fisher just to count them would
        # waste a calibration pass per bisection step
        analytic_size=_M + "selective:fisher_mask_size",
    ),
    MethodSpec("houlsby", _M + "adapters:houlsby_adapters"),
    MethodSpec("pfeiffer", _M + "adapters:pfeiffer_adapters"),
    MethodSpec("parallel_adapter", _M + "adapters:parallel_adapters"),
    MethodSpec("compacter", _M + "adapters:compacter_adapters"),
    MethodSpec("mam", _M + "hybrid:mam_adapter"),
    MethodSpec("unipelt", _M + "hybrid:unipelt"),
)

_BY_KIND = {spec.kind: spec for spec in METHOD_SPECS}  # tests/test_specs.py: no kind twice


def kinds() -> list[str]:
    return sorted(_BY_KIND)


def spec(kind: str) -> MethodSpec:
    """The spec of ``kind``.

    Raises:
        KeyError: an unknown kind, naming the nearest (the config check refuses it first;
            this is for programmatic callers of ``apply_method``).
    """
    if kind not in _BY_KIND:
        near = closest(kind, _BY_KIND)
        hint = f" Did you mean {near}?" if near else ""
        raise KeyError(f"unknown method kind {kind!r}.{hint} Valid: {', '.join(kinds())}")
    return _BY_KIND[kind]


@dataclass(frozen=True)
class PeftType:
    """What the harness must know of a peft type beyond its arguments.

    Attributes:
        prompt_learning: adds virtual tokens or key/value prefixes instead of editing
            weights, so it takes no ``target_modules`` and needs a single-stack model config.
        prepends_tokens: the virtual tokens lengthen the input sequence (prefix tuning adds
            keys and values only, so positions are unchanged); token classification then
            re-aligns labels and logits.
    """

    prompt_learning: bool = False
    prepends_tokens: bool = False


_KV_PREFIX = PeftType(prompt_learning=True)
_VIRTUAL_TOKENS = PeftType(prompt_learning=True, prepends_tokens=True)
#: peft's prompt-learning types (peft 0.21), the ones that are not plain weight edits: two
#: pass a key/value cache, four prepend embeddings. Any other peft type (LoRA, IA3, OFT...)
#: edits target modules, so its YAML needs no entry here; tests/test_specs.py fails when
#: peft adds a prompt-learning type not listed.
PEFT_TYPES: dict[str, PeftType] = {
    "PREFIX_TUNING": _KV_PREFIX,
    "CARTRIDGE": _KV_PREFIX,
    "PROMPT_TUNING": _VIRTUAL_TOKENS,
    "P_TUNING": _VIRTUAL_TOKENS,
    "MULTITASK_PROMPT_TUNING": _VIRTUAL_TOKENS,
    "CPT": _VIRTUAL_TOKENS,
}


def peft_type(name: str) -> PeftType:
    return PEFT_TYPES.get(str(name), PeftType())
