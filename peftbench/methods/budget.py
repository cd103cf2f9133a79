"""Budget matching: size a method so its trainable parameters are a given share of the model.

``method.budget_pct=0.5`` asks for trainable parameters, task head excluded, equal to 0.5% of
the backbone (its parameters, head excluded), within 10%. Each sizable method names its size
knob in its YAML (``budget_knob: peft.r``, ``bottleneck``, ``density_pct``...); the knob is
searched by bisection, since every method's size grows monotonically with its knob (over
the multiples of ``budget_multiple`` where a YAML sets one, e.g. Compacter's n). Methods
with a fixed size (IA3, BitFit, the linear probe...) or whose sizes must divide layer widths
(OFT, BOFT) have ``budget_knob: null`` and refuse.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from omegaconf import OmegaConf
from torch import nn

from peftbench.methods.base import (
    MethodContext,
    MethodNotApplicable,
    apply_method,
    backbone_size,
    count_trainable,
)
from peftbench.methods.specs import spec

#: How far the reached size may be from the budget, relative to the budget.
TOLERANCE = 0.10
#: Largest integer knob tried (a rank or bottleneck beyond this is not "parameter-efficient").
_MAX_INT_KNOB = 1 << 14


def method_size(model: nn.Module, cfg: Any, ctx: MethodContext) -> int:
    """Trainable parameters the method adds or frees, task head excluded (model untouched)."""
    analytic = spec(cfg.kind).sizer()
    if analytic is not None:
        return analytic(model, cfg, ctx)
    return count_trainable(apply_method(copy.deepcopy(model), cfg, ctx), ctx.head_modules)[0]


def _with_knob(cfg: Any, knob: str, value: float) -> Any:
    sized = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    OmegaConf.update(sized, knob, value, merge=False)
    return sized


def _size_or_none(model: nn.Module, cfg: Any, ctx: MethodContext) -> int | None:
    """The method's size, or None where the knob value is invalid (e.g. more layers than exist)."""
    try:
        return method_size(model, cfg, ctx)
    except (MethodNotApplicable, ValueError):
        return None


def _search_int(size: Callable[[int], int | None], target: float) -> int:
    """Smallest-error integer knob by exponential then binary search (size is increasing)."""
    hi = 1
    while hi < _MAX_INT_KNOB and (s := size(hi)) is not None and s < target:
        hi *= 2
    lo = max(1, hi // 2)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        s = size(mid)
        if s is not None and s < target:
            lo = mid
        else:
            hi = mid
    candidates = [(abs(s - target), v) for v in (lo, hi) if (s := size(v)) is not None]
    if not candidates:
        raise MethodNotApplicable("no valid value of the size knob")
    return min(candidates)[1]


def _search_float(size: Callable[[float], int | None], target: float, start: float) -> float:
    """Bisection on a positive real knob (a density in percent, say)."""
    lo, hi = 0.0, max(start, 1e-6)
    while (s := size(hi)) is not None and s < target and hi < 100.0:
        hi *= 2
    for _ in range(50):
        mid = (lo + hi) / 2
        s = size(mid)
        lo, hi = (mid, hi) if s is not None and s < target else (lo, mid)
    return hi


def fit_budget(model: nn.Module, cfg: Any, ctx: MethodContext) -> tuple[Any, dict | None]:
    """Sizes the method to ``cfg.budget_pct`` (if set) and returns (sized cfg, budget facts).

    The facts, for the run record: requested and reached percent, the knob and its value.

    Raises:
        MethodNotApplicable: the method has a fixed size, or no knob value lands within
            :data:`TOLERANCE` of the budget (the message gives the closest size reached).
    """
    pct = cfg.get("budget_pct")
    if pct is None:
        return cfg, None
    knob = cfg.get("budget_knob")
    if not knob:
        raise MethodNotApplicable(
            f"method {cfg.name!r} has no size knob (budget_knob: null in its YAML) and cannot "
            f"be sized to budget_pct={pct}; run it without a budget or size it by hand"
        )
    base = backbone_size(model, ctx.head_modules)
    target = float(pct) / 100.0 * base

    def size(value: float) -> int | None:
        return _size_or_none(model, _with_knob(cfg, knob, value), ctx)

    current = OmegaConf.select(cfg, knob)
    if isinstance(current, int):
        # A knob that must be a multiple of something (Compacter's bottleneck of n) is searched
        # over the multiples, so no value in the search is invalid: an invalid value would
        # read as "too large" and send the bisection the wrong way.
        step = int(cfg.get("budget_multiple") or 1)
        value: float = step * _search_int(lambda k: size(k * step), target)
    else:
        value = _search_float(size, target, float(current or 1.0))
    reached = size(value) or 0
    facts = {
        "requested_pct": float(pct),
        "reached_pct": 100.0 * reached / base,
        "knob": knob,
        "value": value,
        "base": base,
    }
    if abs(reached - target) > TOLERANCE * target:
        raise MethodNotApplicable(
            f"method {cfg.name!r} cannot reach budget_pct={pct} within {TOLERANCE:.0%}: the "
            f"closest {knob}={value} gives {facts['reached_pct']:.4f}%"
        )
    return _with_knob(cfg, knob, value), facts
