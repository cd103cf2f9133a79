"""One cell of the matrix: (task, model, method, seed) -> one JSON record.

The order follows the data flow of the design guide: skip if done, seed, load, apply the
method, train under instrumentation, test once at the dev-selected step, measure, record.
"""

from __future__ import annotations

import logging
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from peftbench import distributed, parallel
from peftbench.assets import cache_root
from peftbench.batching import LengthGroupedBatchSampler, sorted_batches
from peftbench.checkpoint import Checkpointer, Replay, remove_checkpoint
from peftbench.config import ConfigError, validate
from peftbench.data_cache import cache_key, cached_encode
from peftbench.forgetting import ForgettingProbe, is_decoder, probe_length
from peftbench.identity import recipe, recipe_hash
from peftbench.identity import run_id as make_run_id
from peftbench.instrument import (
    AcceleratorBusy,
    EnergyMeter,
    EvalClock,
    PhasedPeakMemory,
    StepTimer,
    count_step_flops,
    ensure_idle,
    forward_params,
    inference_speed,
    peak_tflops,
    training_flops_per_token,
)
from peftbench.interrupt import Interrupted, stop_on_signals
from peftbench.memory_guard import capped_memory
from peftbench.record import (
    code_info,
    env_info,
    find_success,
    utc_now,
    write_record,
)
from peftbench.schema import SCHEMA_VERSION, Experiment, Metrics, Params, Primary, to_json
from peftbench.secrets import scrub
from peftbench.tracking import make_tracker

log = logging.getLogger("peftbench")


def pick_device(name: str) -> torch.device:
    """``auto``: the rank's own GPU under torchrun, a free GPU of several, else cuda or cpu."""
    if name != "auto":
        return torch.device(name)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    rank_device = distributed.local_device()
    if rank_device is not None:
        return rank_device
    count = torch.cuda.device_count()
    if count > 1:  # parallel runs on a multi-GPU node: one GPU each (README "Scaling out")
        return torch.device(f"cuda:{parallel.claim_gpu(count, parallel.job_number() % count)}")
    return torch.device("cuda")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _hydra_overrides() -> list[str]:
    """The command-line overrides of this job, to re-run it exactly (empty outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def experiment_info(cfg: Any, config: dict) -> dict:
    """What the run is: its names, seed and recipe (the values that define its result)."""
    budget = cfg.method.get("budget_pct")
    values = recipe(config, device=_device_kind(cfg.device))
    info = Experiment(
        task=cfg.task.name,
        model=cfg.model.name,
        method=cfg.method.name,
        seed=int(cfg.seed),
        task_version=int(cfg.task.version),
        method_version=int(cfg.method.get("version") or 1),
        budget_pct=budget,
        lr=effective_lr(cfg.method),
        weights=str(cfg.model.get("weights") or "pretrained"),
        sweep_id=str(config["sweep_id"]),  # redacted, as all of config: wandb's group
        overrides=scrub(_hydra_overrides()),
        recipe_hash=recipe_hash(values),
        recipe=values,
    )
    return to_json(info)


def effective_lr(method: Any) -> float:
    """The learning rate the optimizer gets: ``method.lr * method.lr_scale``.

    ``lr_scale`` (default 1) is the knob of an lr grid equal for every method (each method's
    cited lr times the same factors); a config without it trains at ``method.lr``.
    """
    return float(method.lr) * float(method.get("lr_scale", 1.0))


def _device_kind(name: str) -> str:
    """The kind of device a run will use (``auto`` resolved), without claiming one."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(name)


def run(cfg: Any) -> dict:
    """Runs one cell unless a success record exists; always leaves exactly one new record.

    Returns:
        A short summary: run_id, status, the primary metric and the record's path.
    """
    validate(  # before anything is loaded
        cfg, cuda_available=torch.cuda.is_available(), cuda_devices=torch.cuda.device_count()
    )
    results_dir = Path(cfg.results_dir)
    config = scrub(OmegaConf.to_container(cfg, resolve=True))  # also what wandb receives
    experiment = experiment_info(cfg, config)
    run_id = make_run_id(
        experiment["task"],
        experiment["model"],
        experiment["method"],
        experiment["seed"],
        experiment["recipe_hash"],
    )
    done = None if cfg.force else find_success(results_dir, run_id)
    if done is not None:
        log.info("%s: already done, skipping (%s)", run_id, done)
        return {"run_id": run_id, "status": "skipped", "path": str(done)}

    task = _prepare(cfg)  # bad names or data stop here: no record, no model loaded
    record: dict = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "status": "running",
        "error": None,
        "created_at": utc_now(),
        "experiment": experiment,
        "config": config,
        "code": code_info(),
    }
    tracker = make_tracker(
        cfg.tracker if distributed.is_main() else OmegaConf.create({"name": "none"}),
        run_id=run_id,
        config=config,
        experiment=experiment,
        results_dir=results_dir,
    )
    _attempt(cfg, task, record, tracker)
    path = _finish(record, results_dir, tracker)
    if record["status"] == "success" and not cfg.train.get("keep_checkpoints"):
        remove_checkpoint(results_dir, run_id)  # the record now holds everything
    return {
        "run_id": run_id,
        "status": record["status"],
        "path": str(path) if path else None,  # None on data-parallel ranks other than 0
        "primary": record.get("metrics", {}).get("primary"),
        "dev": record.get("metrics", {}).get("dev"),  # at the selected step: what tuning ranks
    }


def _attempt(cfg: Any, task: Any, record: dict, tracker: Any) -> None:
    """Runs the cell into ``record``: success, or the failure as data (the sweep goes on).

    A stop signal writes the record as ``interrupted`` and ends the process (and its sweep).
    """
    run_id = record["run_id"]
    try:
        on_cpu = record["experiment"]["recipe"]["device"] == "cpu"
        with stop_on_signals(), capped_memory(bool(cfg.get("memory_guard")) and on_cpu):
            record.update(_execute(cfg, run_id, tracker, task))
        record["status"] = "success"
    except Exception as error:
        record.update(_failure(error, cfg))
        log.error("%s: %s: %s", run_id, record["status"].upper(), record["error"])
        if not distributed.is_main():
            raise  # torchrun then stops rank 0, which would wait for this rank forever
    except Interrupted as stop:  # the scheduler or the user ends the sweep: say where it was
        record.update(_interruption(stop))
        _finish(record, Path(cfg.results_dir), tracker)
        print(f"peftbench: {run_id}: {record['error']}", file=sys.stderr, flush=True)
        raise SystemExit(stop.exit_code) from None
    finally:
        parallel.release_gpu()  # the next run of this worker process may take another


def _prepare(cfg: Any) -> Any:
    """Checks every name the config gives and reads the data, before a record or a model.

    Returns:
        The task, with its splits read and checked.

    Raises:
        ConfigError: a task kind, reader or metric that is not registered.
        DataError: a data file that is missing or malformed, or a split that would be empty.
        AssetError: an offline asset (data or model) that cannot be fetched or verified.
    """
    from peftbench.assets import check_weights, fetch
    from tasks import TASK_KINDS, build_task
    from tasks.metrics import METRICS
    from tasks.readers import READERS, DataError
    from tasks.splits import train_size_count

    names = [
        (TASK_KINDS.names(), "task kind", "task.kind", cfg.task.kind),
        (READERS.names(), "data reader", "task.source.reader", cfg.task.source.reader),
        *((list(METRICS), "metric", "task.metrics", m) for m in cfg.task.metrics),
    ]
    for valid, what, key, name in names:
        if name not in valid:
            raise ConfigError(f"unknown {what} {name!r} ({key})", f"valid: {', '.join(valid)}")
    task = build_task(cfg.task, seed=int(cfg.seed))
    task.load_metrics()  # task.metric_impl=evaluate: loaded (network) or refused, before a model
    empty = [split for split, rows in task.splits.items() if not rows]
    if empty:
        total = sum(len(rows) for rows in task.splits.values())
        raise DataError(
            f"task {task.name!r}: split {', '.join(empty)} would be empty ({total} examples "
            "in all); add examples or change task.split.fractions"
        )
    requested, n_full = cfg.task.get("train_size"), len(task.full_splits["train"])
    if requested is not None and train_size_count(requested, n_full) > n_full:
        raise ConfigError(
            f"task.train_size={requested} exceeds the {n_full} examples of task "
            f"{task.name!r}'s train split",
            f"use task.train_size of at most {n_full}, or a fraction in (0, 1]",
        )
    n_train = len(task.splits["train"])
    if int(cfg.train.batch_size) > n_train:  # would try to hold the whole set and more at once
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} exceeds the {n_train} training examples "
            f"of task {task.name!r}",
            f"use train.batch_size of at most {n_train} (the recipe's default is 16)",
        )
    if cfg.model.source.get("asset"):
        fetch(cfg.model.source.asset)  # the archive's sha256 checked when first fetched
        check_weights(cfg.model.source.asset)  # and the unpacked weights before every run
    return task


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    message = str(error).lower()  # CUDA's wording; under the CPU cap torch's and ENOMEM's
    words = ("out of memory", "can't allocate memory", "cannot allocate memory")
    return isinstance(error, RuntimeError) and any(w in message for w in words)


def _failure(error: Exception, cfg: Any) -> dict:
    """The record fields of a run that raised: status failed, oom or diverged, and the step."""
    status, message = "failed", f"{type(error).__name__}: {error}"
    if _is_oom(error):
        status = "oom"
        message += (
            f"; to fit, lower train.batch_size (now {cfg.train.batch_size}) or "
            f"task.max_length (now {cfg.task.max_length}), or enable gradient checkpointing"
        )
    elif isinstance(error, FloatingPointError):
        status = "diverged"
        message += (
            f"; lower method.lr (now {cfg.method.lr}, x lr_scale {cfg.method.get('lr_scale', 1)})"
            " or train.max_grad_norm"
        )
    return {
        "status": status,
        "error": message,
        # set by the training loop: the optimisation step that was running (1-based)
        "error_step": getattr(error, "step", None),
        # a method that refuses a model, task or machine is a config error: one line suffices
        "traceback": None if _is_refusal(error) else traceback.format_exc(limit=20),
    }


def _interruption(stop: Interrupted) -> dict:
    """The record fields of a run stopped by a signal: where it was, how to go on."""
    checkpoint = getattr(stop, "checkpoint", None)
    where = f"after step {stop.step}" if stop.step else "before training"
    then = (
        f"checkpoint kept at {checkpoint}; the same command resumes from step {stop.step}"
        if checkpoint
        else "no checkpoint (train.checkpoint_every_steps=0 or no step done); the same "
        "command starts it again"
    )
    return {
        "status": "interrupted",
        "error": f"interrupted by {stop.name} {where}; {then}",
        "error_step": stop.step,
        "traceback": None,
    }


def _is_refusal(error: Exception) -> bool:
    from peftbench.methods.base import MethodNotApplicable

    return isinstance(error, MethodNotApplicable | AcceleratorBusy)


def _finish(record: dict, results_dir: Path, tracker: Any) -> Path | None:
    if not distributed.is_main():
        return None  # a data-parallel run has one record, written by rank 0
    record["finished_at"] = utc_now()
    path = write_record(record, results_dir)
    tracker.finish(record)
    if record["status"] == "success":
        primary, cost = record["metrics"]["primary"], record["cost"]
        log.info(
            "%-44s %s %s=%.4f | trainable %.3f%% | train %.0fs",
            record["run_id"],
            primary["split"],
            primary["name"],
            primary["value"],
            record["params"]["trainable_pct"],
            cost["train_time_s"],
        )
    return path


def _loaders(
    task: Any,
    tokenizer: Any,
    cfg: Any,
    *,
    seed: int,
    cache_dir: Path | None,
    pin_memory: bool = False,
) -> tuple[dict[str, DataLoader], dict]:
    """Encodes every split (through the on-disk cache); returns loaders and data facts.

    The facts: how many examples each split truncated, and whether the encodings came from
    the cache and how long loading or tokenizing took. ``train.num_workers`` collate in
    background processes; pinned memory speeds up host-to-GPU copies.
    """
    collate = partial(task.collate, tokenizer=tokenizer)
    loaders, truncated, tokenize = {}, {}, {}
    for split, rows in task.splits.items():
        features, tokenize[split] = cached_encode(
            partial(task.encode, rows, tokenizer),
            key=cache_key(task, split, tokenizer),
            cache_dir=cache_dir,
        )
        truncated[split] = task.count_truncated(features)
        lengths = [len(f["input_ids"]) for f in features]
        if split == "train":
            batches = LengthGroupedBatchSampler(
                lengths, int(cfg.batch_size), torch.Generator().manual_seed(seed)
            )
        else:
            batches = sorted_batches(lengths, int(cfg.eval_batch_size))
        loaders[split] = DataLoader(
            features,
            batch_sampler=distributed.shard(batches, split=split == "train"),
            collate_fn=collate,
            num_workers=int(cfg.num_workers),
            pin_memory=pin_memory,
            # its own seed source: iterating must not draw from the global RNG that dropout
            # uses, or a run resumed mid-epoch would see other dropout masks
            generator=torch.Generator().manual_seed(seed),
        )
    return loaders, {"n_truncated": truncated, "tokenize": tokenize}


def _accelerate(model: torch.nn.Module, device: torch.device, cfg: Any) -> torch.dtype | None:
    """GPU settings: TF32 matmuls, optional gradient checkpointing, the autocast dtype.

    ``train.precision``: ``auto`` is bf16 autocast on CUDA and fp32 elsewhere (CPU bf16 is
    slower than fp32 on most CPUs); ``bf16`` or ``fp32`` force it.
    """
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return torch.bfloat16 if precision == "bf16" else None


def _compute_cost(
    model: torch.nn.Module,
    timer: StepTimer,
    trainable: int,
    device: torch.device,
    cfg: Any,
    counted: dict,
) -> dict:
    """FLOPs of the run as counted on one real step and, on a GPU with a known peak, MFU.

    ``counted`` is :func:`peftbench.instrument.count_step_flops` on the first training batch:
    FLOPs per *padded* token (``input_ids.numel()``; for an encoder-decoder the decoder's work
    is included, spread over the source tokens). The MFU numerator multiplies it by the same
    padded token count of the measured steps, so numerator and count agree.
    """
    per_token = counted["flops_per_token"]
    seconds = timer.measured_seconds
    achieved = per_token * timer.padded_tokens / seconds if seconds else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    peak = peak_tflops(name, cfg.get("peak_tflops")) if device.type == "cuda" else None
    return {
        "flops_per_token": per_token,  # measured (FlopCounterMode), per padded token
        # 4N + 2N_trainable, N without embedding tables: the old formula, for comparison
        "flops_per_token_analytic": training_flops_per_token(forward_params(model), trainable),
        "flops": round(per_token * timer.padded_tokens_all),
        "flops_counted": counted,  # the counted step: flops, tokens, by_op, seconds
        "achieved_tflops": achieved / 1e12 if achieved is not None else None,
        "mfu": achieved / (peak * 1e12) if peak and achieved is not None else None,
    }


_RUNS_IN_PROCESS = 0  # runs started by this process so far (Hydra's basic launcher: a sweep)


def _runs_before() -> int:
    """How many runs this process started before this one, and counts this one.

    CPU resident-set peaks depend on what earlier runs of the process left mapped (freed
    memory the allocator keeps): the record says whether its process was fresh.
    """
    global _RUNS_IN_PROCESS
    before, _RUNS_IN_PROCESS = _RUNS_IN_PROCESS, _RUNS_IN_PROCESS + 1
    return before


def _count_flops(
    model: torch.nn.Module, loader: DataLoader, device: torch.device, dtype: torch.dtype | None
) -> dict:
    """One real training step's forward + backward on the first training batch, counted.

    Run after training and testing; even so it changes nothing: the batch order is put back
    (``_first_batches``), the RNG streams are forked, gradients are discarded
    (``count_step_flops``). The architecture, hence the count, is the one that trained.
    """
    start = time.perf_counter()
    (batch,) = _first_batches(loader, device, 1)
    counted = count_step_flops(model, batch, device, dtype)
    return {**counted, "seconds": time.perf_counter() - start}


def _inference_cost(
    model: torch.nn.Module, loader: DataLoader, device: torch.device, method_cfg: Any
) -> dict:
    """Forward latency on the test split as trained and, where the method merges, merged.

    Whether it merges is the method YAML's ``mergeable`` (one place, also what the merge
    tests check). Measured last: merging rewrites the model in place.
    """
    from peftbench.methods.base import merge

    result = {"unmerged": inference_speed(model, loader, device), "merged": None}
    if method_cfg.get("mergeable", False):
        result["merged"] = inference_speed(merge(model, method_cfg), loader, device)
    return result


def _first_batches(loader: DataLoader, device: torch.device, n: int) -> list[dict]:
    """The first ``n`` training batches on ``device`` (calibration data for a method).

    The shuffling generator is put back afterwards, so a method that reads calibration data
    trains on the same batch order as every other method of the sweep.
    """
    generator = loader.batch_sampler.generator
    state = generator.get_state()
    batches = [
        {k: v.to(device) for k, v in batch.items()}
        for _, batch in zip(range(n), loader, strict=False)
    ]
    generator.set_state(state)
    return batches


@dataclass
class SetUp:
    """Stage 1: the model with its method applied, on its device, and the data loaders."""

    device: torch.device
    model: torch.nn.Module
    backbone: Any  # peftbench.models.Backbone: tokenizer, head modules, source, weights
    loaders: dict[str, DataLoader]
    data_facts: dict
    budget: dict | None  # method.budget_pct: requested, reached, knob and its value
    autocast_dtype: torch.dtype | None
    base_params: int
    head_params: int
    seconds: float
    parts_s: dict[str, float]  # load, data (tokenize or cache), forgetting, budget, method
    memory: PhasedPeakMemory
    fresh_process: bool
    forgetting: ForgettingProbe | None  # its reference read on the backbone, before the method


@dataclass
class Fit:
    """Stage 2: training with dev selection, and what it was measured by."""

    result: Any  # peftbench.train.TrainResult
    history: list[dict]
    timer: StepTimer
    eval_clock: EvalClock
    checkpoint: Checkpointer
    log_row: Callable[[dict], None]
    energy: EnergyMeter  # over the train() call, its evaluations booked apart


@dataclass
class Measures:
    """Stage 4: parameters, artifact size, FLOPs, memory and inference speed."""

    trainable: int
    total: int
    artifact_bytes: int
    compute: dict
    peak_memory: dict
    inference: dict | None
    forgetting: dict | None


def _execute(cfg: Any, run_id: str, tracker: Any, task: Any) -> dict:
    """The cell's stages: set up, fit, evaluate on test once, measure, then the record."""
    setup = _set_up(cfg, task)
    fit = _fit(cfg, run_id, tracker, task, setup)
    test = _evaluate_test(task, setup, fit)
    measures = _measure(cfg, setup, fit)
    return _record_sections(task, setup, fit, test, measures)


def _set_up(cfg: Any, task: Any) -> SetUp:
    from peftbench.methods import apply_method
    from peftbench.methods.base import count_params, is_head_param
    from peftbench.methods.budget import fit_budget
    from peftbench.models import load_backbone

    device = pick_device(cfg.device)
    distributed.init(device)
    threads = parallel.torch_threads(cfg.train.get("threads", "auto"))
    if threads is not None:  # parallel runs share the cores instead of oversubscribing them
        torch.set_num_threads(threads)
    seed_everything(int(cfg.seed))
    ensure_idle(device)  # a leak from the previous job of this process would skew this one
    fresh_process = _runs_before() == 0
    memory = PhasedPeakMemory(device, "setup")  # set-up, training and evaluation apart
    clock = _PartClock()

    backbone = load_backbone(cfg.model, task)
    clock.part("load_s")
    loaders, data_facts = _loaders(
        task,
        backbone.tokenizer,
        cfg.train,
        seed=int(cfg.seed),
        cache_dir=cache_root() / "tokenized" if cfg.data_cache else None,
        pin_memory=device.type == "cuda",
    )
    clock.part("data_s")
    context = method_context(backbone, task, loaders["train"], cfg.train, device)
    base_params = count_params(backbone.model)
    head_params = count_params(backbone.model, lambda n, _: is_head_param(n, backbone.head_modules))
    probe = _forgetting_reference(cfg, task, backbone, device)
    clock.part("forgetting_s")  # the probe's reference read, before the method
    method_cfg, budget = fit_budget(backbone.model.to(device), cfg.method, context)
    clock.part("budget_s")
    # a method's calibration (fisher_mask's per-example gradients) runs here: set-up time
    model = apply_method(backbone.model, method_cfg, context).to(device)
    autocast_dtype = _accelerate(model, device, cfg.train)
    clock.part("method_s")
    memory.switch("train")
    return SetUp(
        device, model, backbone, loaders, data_facts, budget, autocast_dtype, base_params,
        head_params, clock.total(), clock.parts, memory, fresh_process, probe,
    )  # fmt: skip


def _forgetting_reference(
    cfg: Any, task: Any, backbone: Any, device: torch.device
) -> ForgettingProbe | None:
    """The probe read on the backbone as loaded, before a method touches it (set-up time)."""
    if not cfg.instrument.get("forgetting", True):
        return None
    probe = ForgettingProbe(
        backbone.tokenizer,
        task.head,
        device,
        is_decoder(backbone.model),
        max_tokens=probe_length(backbone.model, int(task.cfg.max_length)),
    )
    probe.take_reference(backbone.model.to(device))
    return probe


def method_context(
    backbone: Any, task: Any, train_loader: DataLoader, train_cfg: Any, device: torch.device
) -> Any:
    """What a method is told about the backbone, the task and the run it is applied to."""
    from peftbench.methods import MethodContext
    from peftbench.train import total_steps

    return MethodContext(
        head_modules=backbone.head_modules,
        peft_task_type=task.peft_task_type,
        model_type=backbone.model.config.model_type,
        calibration_batches=partial(_first_batches, train_loader, device),
        total_steps=total_steps(train_cfg, len(train_loader)),
    )


class _PartClock:
    """Seconds of each named part of the set-up, one after another."""

    def __init__(self) -> None:
        self.start = self.mark = time.perf_counter()
        self.parts: dict[str, float] = {}

    def part(self, name: str) -> None:
        now = time.perf_counter()
        self.parts[name], self.mark = now - self.mark, now

    def total(self) -> float:
        return time.perf_counter() - self.start


def _fit(cfg: Any, run_id: str, tracker: Any, task: Any, setup: SetUp) -> Fit:
    from peftbench.methods.base import step_hook
    from peftbench.train import train

    history: list[dict] = []
    timer = StepTimer(int(cfg.train.warmup_steps_excluded), setup.device)
    energy = EnergyMeter(setup.device)
    # evaluations book their memory to the eval phase, their energy apart from training's
    eval_clock = EvalClock(setup.memory, energy)

    def log_row(row: dict) -> None:
        if "train/loss" in row:  # the loop logs the loss; instrumentation adds its readings
            row = {
                **row,
                "train/step_time_s": timer.durations[-1],
                "train/peak_rss_bytes": setup.memory.read("train")["rss"],
            }
        history.append(row)
        tracker.log(row)

    checkpoint = Checkpointer.for_run(
        cfg, run_id, {"history": Replay(history, tracker.log), "timer": timer, "clock": eval_clock}
    )
    with energy.measure():  # the counter read at start and end (RAPL: polled in between)
        result = train(
            distributed.wrap(setup.model, setup.device),  # gradients averaged across ranks
            train_loader=setup.loaders["train"],
            dev_loader=setup.loaders["dev"],
            task=task,
            cfg=cfg.train,
            lr=effective_lr(cfg.method),
            device=setup.device,
            timer=timer,
            eval_clock=eval_clock,
            log=log_row,
            description=run_id,
            step_hook=step_hook(setup.model),
            autocast_dtype=setup.autocast_dtype,
            # one process's state; a data-parallel run's ranks would each need theirs
            checkpoint=checkpoint if distributed.world_size() == 1 else None,
        )
    return Fit(result, history, timer, eval_clock, checkpoint, log_row, energy)


def _evaluate_test(task: Any, setup: SetUp, fit: Fit) -> dict:
    """Stage 3: the test split, once, at the dev-selected step."""
    from peftbench.train import evaluate

    with fit.eval_clock.measure():
        test = evaluate(
            setup.model, setup.loaders["test"], task, setup.device, setup.autocast_dtype
        )
    fit.log_row({"step": fit.result.steps, **{f"test/{k}": v for k, v in test.items()}})
    return test


def _measure(cfg: Any, setup: SetUp, fit: Fit) -> Measures:
    from peftbench.methods import save_trainable
    from peftbench.methods.base import count_params, count_trainable

    model, device = setup.model, setup.device
    # After training, so the counted step can change nothing the run measures or learns
    # (and a fault at step k stays at step k); its memory is neither phase's.
    with setup.memory.phase("flop_count"):
        counted = _count_flops(model, setup.loaders["train"], device, setup.autocast_dtype)
    trainable, total = count_params(model, lambda _, p: p.requires_grad), count_params(model)
    if setup.budget is not None:  # what the sized method really trains, head excluded
        reached = count_trainable(model, setup.backbone.head_modules)[0]
        setup.budget["reached_pct"] = 100.0 * reached / setup.budget["base"]
    with tempfile.TemporaryDirectory() as tmp:
        artifact_bytes = save_trainable(model, Path(tmp) / "trainable.safetensors")
    # per phase, before the inference measurements; the top level is training's peak
    peak_memory = {**setup.memory.summary(), "fresh_process": setup.fresh_process}
    compute = _compute_cost(model, fit.timer, trainable, device, cfg.instrument, counted)
    forgetting = None
    if setup.forgetting is not None:  # before inference: merging rewrites the model
        with setup.memory.phase("forgetting"):
            forgetting = setup.forgetting.result(model)
    inference = (
        _inference_cost(model, setup.loaders["test"], device, cfg.method)
        if cfg.instrument.inference and distributed.is_main()  # rank 0 records; others skip
        else None
    )
    return Measures(trainable, total, artifact_bytes, compute, peak_memory, inference, forgetting)


def _record_sections(task: Any, setup: SetUp, fit: Fit, test: dict, measures: Measures) -> dict:
    """Stage 5: the record's sections from the stages' results (record.py writes it)."""
    return {
        "env": {**env_info(setup.device), "distributed": distributed.info()},
        "data": {
            "source": str(task.cfg.source.get("file") or task.cfg.source),
            "asset": task.cfg.source.get("asset"),
            "synthetic": bool(getattr(task, "synthetic", False)),  # generated ids, no corpus
            "fingerprint": task.fingerprint,
            "n": {split: len(rows) for split, rows in task.splits.items()},
            **task.train_size_facts(),  # task.train_size: asked for, and the whole train split
            **setup.data_facts,
        },
        "model_source": {"source": setup.backbone.source, "weights": setup.backbone.weights},
        "params": to_json(
            Params(
                base=setup.base_params,
                total=measures.total,
                trainable=measures.trainable,
                trainable_pct=100.0 * measures.trainable / setup.base_params,
                head=setup.head_params,
                head_modules=setup.backbone.head_modules,
                artifact_bytes=measures.artifact_bytes,
                budget=setup.budget,
            )
        ),
        "cost": _cost_section(setup, fit, measures),
        # the probe text before vs after training (peftbench/forgetting.py, README)
        "forgetting": measures.forgetting,
        "metrics": to_json(
            Metrics(
                primary=Primary(
                    task.primary_metric, "test", test[task.primary_metric], task.higher_is_better
                ),
                dev=fit.result.best_dev,
                test=test,
                selected_step=fit.result.best_step,
                implementation=task.metric_implementation,
            )
        ),
        "history": fit.history,
    }


def _cost_section(setup: SetUp, fit: Fit, measures: Measures) -> dict:
    return {
        "setup_time_s": setup.seconds,
        # load, data (tokenize or cache), the forgetting probe's reference, budget search,
        # method (with its calibration)
        "setup_parts_s": setup.parts_s,
        "train_time_s": fit.result.train_s,  # evaluation and checkpoint saving excluded
        "eval_time_s": fit.eval_clock.seconds,
        # peak memory covers the resumed process only; times and counts the whole run
        "checkpoint": {
            "every_steps": fit.checkpoint.every,
            "resumed_from_step": fit.checkpoint.resumed_from,
        },
        **fit.timer.summary(),
        **measures.compute,
        "peak_mem_bytes": measures.peak_memory,
        "inference": measures.inference,
        # training's energy (evaluations apart), per padded token as FLOPs count them
        "energy": fit.energy.summary(fit.timer.padded_tokens_all),
    }
