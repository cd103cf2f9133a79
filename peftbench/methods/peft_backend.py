"""Methods peft already implements: one YAML names the peft type and its arguments.

Also the two places where the harness has to help peft: AdaLoRA's per-step budget
re-allocation (a step hook plus a schedule sized to the run) and prompt-style methods on
token classification (labels and logits re-aligned around the virtual tokens).
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from peftbench.methods.base import (
    CHECKPOINT_STATE_ATTR,
    SELECT_FROM_ATTR,
    STEP_HOOK_ATTR,
    MethodContext,
    MethodNotApplicable,
)
from peftbench.methods.specs import peft_type
from peftbench.models.architectures import for_model_type

# peft 0.21 calls a transformers 5 attribute that warns on every wrap; it is not actionable here.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


#: ``target_modules: layer-linear`` in a method YAML: every linear layer inside the transformer
#: layers (attention and feed-forward), per architecture (``Architecture.layer_linear``).
#: peft's own "all-linear" would also adapt BERT's pooler, which no paper here adapts.
LAYER_LINEAR = "layer-linear"


def layer_linear_targets(cfg: Any, architecture: Any, model_type: str) -> str:
    """The architecture's regex for :data:`LAYER_LINEAR`, or a one-line refusal."""
    if architecture is None or not architecture.layer_linear:
        raise MethodNotApplicable(
            f"method {cfg.name!r}: target_modules={LAYER_LINEAR} is not known for model type "
            f"{model_type!r}; add its layer_linear pattern to peftbench/models/architectures.py "
            "or list method.peft.target_modules"
        )
    return architecture.layer_linear


def peft_args(cfg: Any, ctx: MethodContext) -> dict:
    """The peft config arguments: the YAML's ``peft:`` block plus what the run decides."""
    args = OmegaConf.to_container(cfg.peft, resolve=True)
    args = {k: v for k, v in args.items() if v is not None}  # null = peft's own default
    args["task_type"] = ctx.peft_task_type
    architecture = for_model_type(ctx.model_type)
    if not peft_type(args["peft_type"]).prompt_learning and "target_modules" not in args:
        if args["peft_type"] == "IA3" and architecture and architecture.ia3_targets:
            if "feedforward_modules" in args:
                raise MethodNotApplicable(
                    f"method {cfg.name!r}: feedforward_modules is set but target_modules is "
                    "not; set both (peft needs the feed-forward ones among the targets)"
                )
            args["target_modules"], args["feedforward_modules"] = architecture.ia3_targets
        elif architecture and architecture.peft_targets:
            args["target_modules"] = architecture.peft_targets
    if args.get("target_modules") == LAYER_LINEAR:
        args["target_modules"] = layer_linear_targets(cfg, architecture, ctx.model_type)
    if ctx.head_modules:
        args["modules_to_save"] = sorted(
            set(args.get("modules_to_save") or []) | set(ctx.head_modules)
        )
    if args["peft_type"] == "ADALORA":
        args.update(adalora_schedule(cfg, ctx))
    return args


def adalora_schedule(cfg: Any, ctx: MethodContext) -> dict:
    """AdaLoRA's phases in steps of this run: warm-up, budget pruning, final fine-tuning, and
    the interval between two reallocations.

    The YAML gives each as a share of the run (``schedule.tinit_frac``, ``tfinal_frac``,
    ``deltaT_frac``): the paper's step counts belong to its own, much longer, schedules, and
    across its GLUE tasks it keeps them at similar shares of each task's total (see
    conf/method/adalora.yaml). The interval is at least one step.
    """
    if not ctx.total_steps:
        raise MethodNotApplicable(
            f"method {cfg.name!r} (AdaLoRA) needs the run's total step count to schedule its "
            "rank budget (MethodContext.total_steps)"
        )
    steps = int(ctx.total_steps)
    schedule = cfg.schedule
    tinit = math.floor(float(schedule.tinit_frac) * steps)
    tfinal = math.floor(float(schedule.tfinal_frac) * steps)
    delta = max(1, round(float(schedule.get("deltaT_frac", 0.0)) * steps))
    return {"total_step": steps, "tinit": tinit, "tfinal": tfinal, "deltaT": delta}


def adalora_final_step(args: dict) -> int:
    """The first 1-based step after which AdaLoRA holds its final budget (``target_r``).

    The loop calls the hook with the 0-based step, and peft masks to the final rank pattern
    at 0-based step ``total_step - tfinal``, i.e. after 1-based step ``total_step - tfinal +
    1``. With ``tfinal = 0`` that step never comes (the cubic schedule ends just above the
    target at the last step); the last step is then the only one the schedule finishes at.
    """
    total, tfinal = int(args["total_step"]), int(args["tfinal"])
    return min(total, total - tfinal + 1)


class AdaLoraAllocation:
    """AdaLoRA's budget state that peft keeps outside the parameters, for checkpoints.

    The rank allocator's importance averages (``exp_avg_ipt``, ``exp_avg_unc``, and the last
    ``ipt``) decide which ranks the budget phase prunes, and the final ``rank_pattern`` masks
    every step after it. Neither is a parameter or buffer: without them a resumed run prunes
    from fresh averages, and past the final step peft masks with no pattern and fails.
    """

    TABLES = ("ipt", "exp_avg_ipt", "exp_avg_unc")

    def __init__(self, model: nn.Module) -> None:
        self.model = model  # peft's AdaLoraModel

    def _config(self) -> Any:
        return self.model.peft_config[self.model.trainable_adapter_name]

    def state_dict(self) -> dict:
        allocator = self.model.rankallocator
        tables = {name: dict(getattr(allocator, name)) for name in self.TABLES}
        return {**tables, "rank_pattern": self._config().rank_pattern}

    def load_state_dict(self, state: dict) -> None:
        params = dict(self.model.model.named_parameters())  # the allocator's names
        for name in self.TABLES:
            table = {n: t.to(params[n].device, params[n].dtype) for n, t in state[name].items()}
            setattr(self.model.rankallocator, name, table)
        self._config().rank_pattern = state["rank_pattern"]


def align_virtual_tokens(model: nn.Module, n_virtual: int) -> None:
    """Token classification with prepended virtual tokens: keeps labels and logits aligned.

    peft prepends ``n_virtual`` prompt vectors but passes the labels through unchanged, so
    the loss would pair each label with the wrong position. Labels get ``-100`` (ignored)
    for the virtual positions, and the logits of those positions are dropped, so predictions
    line up with the input tokens again.
    """

    def pad_labels(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        labels = kwargs.get("labels")
        if labels is not None:
            pad = labels.new_full((labels.shape[0], n_virtual), -100)
            kwargs["labels"] = torch.cat([pad, labels], dim=1)
        return args, kwargs

    def drop_virtual_logits(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        output.logits = output.logits[:, n_virtual:]
        return output

    model.register_forward_pre_hook(pad_labels, with_kwargs=True)
    model.register_forward_hook(drop_virtual_logits, with_kwargs=True)


def keep_positions_from_zero(model: nn.Module) -> int:
    """Stops absolute position embeddings from being shifted by the length of a prefix.

    transformers' BERT-family embeddings start position ids at the cache length, and peft
    passes its prefix as a cache, so with a 20-token prefix the real tokens would get
    positions 20.. instead of 0.. (and overflow the table near the maximum length). A prefix
    holds keys and values only, never positions, so the offset is forced back to zero.
    Returns how many embedding modules were patched (0 for rotary-position families).
    """

    def from_zero(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs["past_key_values_length"] = 0
        return args, kwargs

    patched = 0
    for module in model.modules():
        if "past_key_values_length" in inspect.signature(module.forward).parameters:
            module.register_forward_pre_hook(from_zero, with_kwargs=True)
            patched += 1
    return patched


class TorchBlockDiag:
    """peft's ``fbd_cuda`` extension (block-diagonal assembly for BOFT) in plain torch.

    Without that CUDA extension, peft 0.21 silently sets every BOFT layer's butterfly factor
    to 1 (peft/tuners/boft/layer.py: "Setting boft_n_butterfly_factor to 1"), and BOFT with
    one factor is OFT plus a scale: no butterfly would be benchmarked on a CPU, or on a GPU
    without ninja. Its torch fallback only handles one factor, so this stand-in takes the
    extension's place: ``forward`` turns blocks ``(N, D, H, H)`` into ``N`` block-diagonal
    ``(D*H, D*H)`` matrices, ``backward`` takes each block's gradient back out.
    """

    @staticmethod
    def forward(blocks: torch.Tensor) -> list[torch.Tensor]:
        return [torch.stack([torch.block_diag(*factor.unbind(0)) for factor in blocks])]

    @staticmethod
    def backward(grad: torch.Tensor, blocks: torch.Tensor) -> list[torch.Tensor]:
        n, d, h, _ = blocks.shape
        index = torch.arange(d, device=grad.device)
        diagonal = grad.reshape(n, d, h, d, h)[:, index, :, index, :]  # (d, n, h, h)
        return [diagonal.permute(1, 0, 2, 3).contiguous()]


def keep_butterfly_factors() -> None:
    """Makes peft build BOFT with the butterfly factor its config asks for (see
    :class:`TorchBlockDiag`); a compiled extension already loaded is kept."""
    from peft.tuners.boft import layer

    if layer._FBD_CUDA is None:
        layer._FBD_CUDA = TorchBlockDiag


def wrap(model: nn.Module, args: dict) -> nn.Module:
    """``peft.get_peft_model`` with the harness's fixes for prefix-style methods and BOFT."""
    import peft

    if args["peft_type"] == "BOFT":
        keep_butterfly_factors()
    prompt = peft_type(args["peft_type"])
    if prompt.prompt_learning and not prompt.prepends_tokens:  # a key/value prefix
        keep_positions_from_zero(model)
    return peft.get_peft_model(model, peft.get_peft_config(args))


def peft_method(model: nn.Module, cfg: Any, ctx: MethodContext) -> nn.Module:
    """Wraps the model with the peft config ``cfg.peft`` (``peft_type`` + its arguments).

    The task head is put in ``modules_to_save`` so it trains for every method.
    """
    args = peft_args(cfg, ctx)
    wrapped = wrap(model, args)
    if args["peft_type"] == "ADALORA":
        # peft: call after optimizer.step() and before zero_grad(), with the step index.
        setattr(wrapped, STEP_HOOK_ATTR, wrapped.base_model.update_and_allocate)
        setattr(wrapped, SELECT_FROM_ATTR, adalora_final_step(args))
        setattr(wrapped, CHECKPOINT_STATE_ATTR, AdaLoraAllocation(wrapped.base_model))
    if ctx.peft_task_type == "TOKEN_CLS" and peft_type(args["peft_type"]).prepends_tokens:
        align_virtual_tokens(wrapped, int(args["num_virtual_tokens"]))
    return wrapped
