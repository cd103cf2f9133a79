"""The training loop: plain PyTorch, AdamW, warm-up + linear decay, best-dev selection.

Instrumentation is passed in (a step timer and an evaluation clock) and wraps the step and
evaluation blocks from outside; nothing here measures or records by itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from peftbench.measure.instrument import Clock, StepTimer
from peftbench.methods.base import is_head_param, select_from_step
from peftbench.runner import data_parallel
from peftbench.runner.checkpoint import Checkpointer, LoopState
from peftbench.runner.interrupt import Interrupted, defer_stop
from peftbench.runner.text_progress import TextProgress


@dataclass
class TrainResult:
    steps: int
    best_step: int
    best_dev: dict[str, float]
    history: list[dict] = field(default_factory=list)
    train_s: float = 0.0  # loop wall time without evaluation and checkpoint saving
    resumed_s: float = 0.0  # loop wall time spent before this process (a resumed run)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision in ``dtype`` (e.g. bf16 on GPUs); a no-op context when None."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    task: Any,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    outputs: dict | None = None,
) -> dict:
    """Runs the model over a split and returns the task's metrics.

    ``outputs``, when given, receives ``preds``, ``refs`` and ``probs`` (the predicted
    class's probability, None where the kind has none) in loader order: the per-example
    predictions a record keeps (peftbench/records/predictions.py).
    """
    model = data_parallel.unwrap(model)  # no gradient sync to do; DDP would hide generate()
    was_training = model.training
    model.eval()
    scored = getattr(task, "predict_scored", None) if outputs is not None else None
    preds, refs, probs = [], [], []
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(device, autocast_dtype):
            if scored is not None:
                batch_preds, batch_probs = scored(model, batch)
            else:  # a forward pass, or generation
                batch_preds, batch_probs = task.predict_batch(model, batch), None
        preds += batch_preds
        probs += batch_probs if batch_probs is not None else [None] * len(batch_preds)
        refs += task.references(batch)
    model.train(was_training)
    preds, refs = data_parallel.gather(preds), data_parallel.gather(refs)  # each rank's share
    if outputs is not None:
        outputs.update(preds=preds, refs=refs, probs=data_parallel.gather(probs))
    return task.compute_metrics(preds, refs)


def linear_warmup_decay(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Learning-rate factor: linear from 0 to 1 over warm-up, then linear down to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _restore(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for name, param in model.named_parameters():
        if name in state:
            param.data.copy_(state[name])


def _is_better(new: float, best: float | None, higher_is_better: bool) -> bool:
    if best is None:
        return True
    return new > best if higher_is_better else new < best


def _select(model: nn.Module, state: LoopState, dev: dict[str, float], task: Any) -> bool:
    """Keeps this evaluation as the run's best (a snapshot of the trainable weights) if its
    primary metric beats the best so far; says whether it did."""
    value = dev[task.primary_metric]
    if not _is_better(value, state.best_value, task.higher_is_better):
        return False
    state.best_value, state.best_state = value, _snapshot(model)
    state.best_step, state.best_dev = state.step, dev
    return True


def _optimisation_step(
    model: nn.Module,
    batch: dict,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    params: Sequence[nn.Parameter],
    max_grad_norm: float,
    step: int,
    *,
    step_hook: Callable[[int], None] | None,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> torch.Tensor:
    """Step ``step`` (1-based): one forward, backward and clipped AdamW update; returns the
    batch's loss."""
    with autocast(device, autocast_dtype):
        loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    if step_hook is not None:  # e.g. AdaLoRA: reads gradients, so before zeroing
        step_hook(step - 1)  # 0-based, as peft's examples count
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


#: Method tensors whose identity (no change to the backbone) is not zero, by the name of the
#: module that holds them: decay would pull them toward a very different model, not toward
#: "no adaptation". (IA)^3's scaling vectors start at 1 (Liu et al. 2022, Sec. 3.3; peft's
#: ``ia3_l``); DoRA's magnitude starts at the weight's column norms (Liu et al. 2024, Eq. 2;
#: peft's ``lora_magnitude_vector``).
NONZERO_IDENTITY_MODULES = ("ia3_l", "lora_magnitude_vector")


def _no_decay(module: nn.Module, module_name: str, param_name: str) -> bool:
    """Whether weight decay must spare this tensor: biases, norm weights, prompt embeddings,
    and method vectors whose identity is not zero (:data:`NONZERO_IDENTITY_MODULES`).

    Decay pulls a tensor toward zero; that regularises weight matrices but would shrink
    BitFit's pretrained biases, the LayerNorm gains and the soft prompts/prefixes (peft's
    ``prompt_encoder`` embeddings) toward values that mean nothing. Excluding biases and
    LayerNorm weights is the BERT / transformers Trainer recipe (Devlin et al. 2019).
    """
    if param_name == "bias" or param_name.endswith("_bias"):
        return True
    if isinstance(module, nn.LayerNorm | nn.GroupNorm) or type(module).__name__.endswith("Norm"):
        return True  # LayerNorm, and the RMSNorm / T5LayerNorm classes of other families
    parts = module_name.split(".")
    if any(part in NONZERO_IDENTITY_MODULES for part in parts):
        return True
    return "prompt_encoder" in parts and isinstance(module, nn.Embedding)


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    head_lr: float | None = None,
    head_modules: Sequence[str] = (),
) -> list[dict]:
    """AdamW parameter groups: the trainable tensors with and without weight decay.

    With ``head_lr``, the task head's tensors (``head_modules``) get groups of their own at
    that learning rate, where a method's paper trains the head at another rate than the
    method (FourierFT's reference: NLU_GLUE.py L112-119); otherwise the two groups share the
    optimizer's lr.
    """
    split_head = head_lr is not None
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {
        (head, decays): [] for head in ((False, True) if split_head else (False,))
        for decays in (True, False)
    }  # fmt: skip
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            in_head = split_head and is_head_param(f"{module_name}.{param_name}", head_modules)
            decays = not _no_decay(module, module_name, param_name)
            groups[(in_head, decays)].append(param)
    return [
        {"params": params, "weight_decay": weight_decay if decays else 0.0}
        | ({"lr": head_lr} if head else {})
        for (head, decays), params in groups.items()
    ]


def total_steps(cfg: Any, batches_per_epoch: int) -> int:
    return int(cfg.max_steps) if cfg.get("max_steps") else int(cfg.epochs) * batches_per_epoch


def train(
    model: nn.Module,
    *,
    train_loader: DataLoader,
    dev_loader: DataLoader,
    task: Any,
    cfg: Any,
    lr: float,
    device: torch.device,
    timer: StepTimer,
    eval_clock: Clock,
    log: Callable[[dict], None],
    description: str = "train",
    step_hook: Callable[[int], None] | None = None,
    autocast_dtype: torch.dtype | None = None,
    checkpoint: Checkpointer | None = None,
    observe: Callable[[int, dict, dict, bool], None] | None = None,
    head_lr: float | None = None,
    head_modules: Sequence[str] = (),
) -> TrainResult:
    """Trains the model's trainable parameters and leaves it at the best dev checkpoint.

    Args:
        model: the backbone with a method applied; only ``requires_grad`` parameters train.
        train_loader: shuffled training batches.
        dev_loader: the selection split, evaluated every ``cfg.eval_every_steps`` and at the end.
        task: the task (metrics, primary metric and its direction).
        cfg: the ``train`` config group.
        lr: the method's learning rate.
        device: where the model lives.
        timer: wraps every optimisation step.
        eval_clock: wraps every evaluation, so training time can exclude it.
        log: receives one dict per logged step (history row; also sent to the tracker).
        description: progress-bar label.
        step_hook: the method's per-step hook (``peftbench.methods.step_hook``), called with
            the 0-based step after each optimiser step, while the gradients are still there.
        autocast_dtype: mixed-precision dtype of forward passes (bf16 on GPUs), or None.
        checkpoint: resumes from a checkpoint of this run if there is one, and saves one
            every ``cfg.checkpoint_every_steps`` steps.
        observe: called after every dev evaluation with the step, its metrics, its
            per-example outputs (``evaluate``'s) and whether it became the selected step.
        head_lr: the task head's own learning rate, where the method's paper gives one
            (``method.head_lr``); None: the head trains at ``lr``.
        head_modules: the task head's module names (for ``head_lr``).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = param_groups(
        model, float(cfg.weight_decay), head_lr=head_lr, head_modules=head_modules
    )
    optimizer = torch.optim.AdamW(groups, lr=lr)
    steps = total_steps(cfg, len(train_loader))
    warmup = math.ceil(float(cfg.warmup_ratio) * steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(warmup, steps))
    eval_every = int(cfg.eval_every_steps) or len(train_loader)
    select_from = select_from_step(data_parallel.unwrap(model))  # AdaLoRA: once its budget is final

    sampler = train_loader.batch_sampler
    state = checkpoint and checkpoint.restore(model, optimizer, scheduler, sampler)
    state = state or LoopState()  # state.step: the step running now (1-based) once drawn
    resumed_s = state.elapsed_s
    start = time.perf_counter() - resumed_s
    saving = checkpoint or Clock()  # both count seconds: spent saving, none without

    def train_s() -> float:
        return time.perf_counter() - start - eval_clock.seconds - saving.seconds

    def history_row(values: dict) -> dict:
        return {"step": state.step, **values, "elapsed_s": time.perf_counter() - start,
                "train_s": train_s()}  # fmt: skip

    def save_checkpoint() -> None:
        elapsed = time.perf_counter() - start
        checkpoint.save(state, model, optimizer, scheduler, sampler, elapsed_s=elapsed)

    model.train()
    # Off when stderr is not a terminal (CI logs stay readable).
    bar = tqdm(
        total=steps, initial=state.step, desc=description, leave=False, dynamic_ncols=True,
        disable=None,
    )  # fmt: skip
    lines = TextProgress(
        description, steps, state.step, enabled=bar.disable and data_parallel.is_main()
    )
    stop = defer_stop()  # a stop signal now waits for the step under way (and its eval)
    try:
        while state.step < steps:
            for batch in train_loader:
                stop.check()  # between steps: steps 1..state.step are complete
                batch = to_device(batch, device)
                state.step += 1
                step = state.step
                with timer.step(batch):
                    loss = _optimisation_step(
                        model, batch, optimizer, scheduler, params, float(cfg.max_grad_norm),
                        step, step_hook=step_hook, device=device, autocast_dtype=autocast_dtype,
                    )  # fmt: skip
                loss_value = data_parallel.mean(loss.item())  # the global batch's loss
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"loss is {loss_value} at step {step}")
                bar.update()
                bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
                lines.step(step, loss_value)
                if step % int(cfg.log_every_steps) == 0:
                    lr_now = scheduler.get_last_lr()[0]
                    log(history_row({"train/loss": loss_value, "train/lr": lr_now}))
                if step % eval_every == 0 or step == steps:
                    outputs = {} if observe is not None else None
                    with eval_clock.measure():
                        dev = evaluate(model, dev_loader, task, device, autocast_dtype, outputs)
                    log(history_row({f"dev/{k}": v for k, v in dev.items()}))
                    selected = step >= select_from and _select(model, state, dev, task)
                    lines.dev(step, task.primary_metric, dev[task.primary_metric], state.best_value)
                    if observe is not None:  # the run's predictions and collapse watch
                        observe(step, dev, outputs, selected)
                if step >= steps:
                    break
                if checkpoint is not None and checkpoint.due(step):
                    save_checkpoint()
        stop.check()  # a signal during the last step: its checkpoint still resumes
    except Interrupted as interrupted:
        interrupted.step = state.step
        if checkpoint is not None and checkpoint.every > 0 and state.step > 0:
            save_checkpoint()
            interrupted.checkpoint = checkpoint.path
        raise
    except Exception as error:
        # A failed run's record names the step (diverged at 5, out of memory at 1).
        error.step = state.step  # type: ignore[attr-defined]
        raise
    finally:
        stop.release()
    bar.close()
    if state.best_state is not None:
        _restore(model, state.best_state)
    return TrainResult(
        steps, state.best_step, state.best_dev, train_s=train_s(), resumed_s=resumed_s
    )
