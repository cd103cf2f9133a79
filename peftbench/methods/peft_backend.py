"""Methods peft already implements: one YAML names the peft type and its arguments."""

from __future__ import annotations

import warnings
from typing import Any

from omegaconf import OmegaConf
from torch import nn

from peftbench.methods.base import METHOD_KINDS, MethodContext

# peft 0.21 calls a transformers 5 attribute that warns on every wrap; it is not actionable here.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


@METHOD_KINDS.register("peft")
def peft_method(model: nn.Module, cfg: Any, ctx: MethodContext) -> nn.Module:
    """Wraps the model with the peft config ``cfg.peft`` (``peft_type`` + its arguments).

    The task head is put in ``modules_to_save`` so it trains for every method.
    """
    import peft

    args = OmegaConf.to_container(cfg.peft, resolve=True)
    args = {k: v for k, v in args.items() if v is not None}  # null = peft's own default
    args["task_type"] = ctx.peft_task_type
    if ctx.head_modules:
        args["modules_to_save"] = sorted(
            set(args.get("modules_to_save") or []) | set(ctx.head_modules)
        )
    return peft.get_peft_model(model, peft.get_peft_config(args))
