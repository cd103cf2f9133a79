"""PEFT methods behind one interface. Importing this package registers every method kind."""

from peftbench.methods import (  # noqa: F401  (registration)
    adapters,
    baselines,
    hybrid,
    peft_backend,
    quantized,
    selective,
)
from peftbench.methods.base import (
    METHOD_KINDS,
    MethodContext,
    apply_method,
    load_trainable,
    save_trainable,
)

__all__ = ["METHOD_KINDS", "MethodContext", "apply_method", "load_trainable", "save_trainable"]
