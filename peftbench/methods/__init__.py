"""PEFT methods behind one interface.

The kinds are declared in :mod:`peftbench.methods.specs` (one list, no torch); a method's
module is imported when a run applies it. The interface below is imported lazily too, so
reading the specs (the config check) loads no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_INTERFACE = ("MethodContext", "apply_method", "load_trainable", "save_trainable")
__all__ = list(_INTERFACE)


def __getattr__(name: str) -> Any:
    if name in _INTERFACE:
        value = getattr(importlib.import_module("peftbench.methods.base"), name)
        globals()[name] = value  # later look-ups (and monkeypatch) see a plain attribute
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
