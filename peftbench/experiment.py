"""One cell of the matrix: (task, model, method, seed) -> one JSON record.

The order follows the data flow of the design guide: skip if done, seed, load, apply the
method, train under instrumentation, test once at the dev-selected step, measure, record.
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from peftbench.batching import LengthGroupedBatchSampler, sorted_batches
from peftbench.instrument import Clock, PeakMemory, StepTimer
from peftbench.record import (
    SCHEMA_VERSION,
    code_info,
    env_info,
    find_success,
    make_run_id,
    utc_now,
    write_record,
)
from peftbench.tracking import make_tracker

log = logging.getLogger("peftbench")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


def experiment_info(cfg: Any) -> dict:
    budget = cfg.method.get("budget_pct")
    return {
        "task": cfg.task.name,
        "task_version": int(cfg.task.version),
        "model": cfg.model.name,
        "method": cfg.method.name,
        "seed": int(cfg.seed),
        "budget_pct": budget,
        "sweep_id": str(cfg.sweep_id),
        "overrides": _hydra_overrides(),
    }


def run(cfg: Any) -> dict:
    """Runs one cell unless a success record exists; always leaves exactly one new record.

    Returns:
        A short summary: run_id, status, the primary metric and the record's path.
    """
    results_dir = Path(cfg.results_dir)
    experiment = experiment_info(cfg)
    run_id = make_run_id(
        experiment["task"],
        experiment["model"],
        experiment["method"],
        experiment["seed"],
        experiment["budget_pct"],
    )
    done = None if cfg.force else find_success(results_dir, run_id)
    if done is not None:
        log.info("%s: already done, skipping (%s)", run_id, done)
        return {"run_id": run_id, "status": "skipped", "path": str(done)}

    config = OmegaConf.to_container(cfg, resolve=True)
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
        cfg.tracker, run_id=run_id, config=config, experiment=experiment, results_dir=results_dir
    )
    try:
        record.update(_execute(cfg, run_id, tracker))
        record["status"] = "success"
    except Exception as error:  # a failed run is data; the sweep goes on
        record.update(
            status="failed",
            error=f"{type(error).__name__}: {error}",
            traceback=traceback.format_exc(limit=20),
        )
        log.error("%s: FAILED: %s", run_id, record["error"])
    except KeyboardInterrupt:
        record.update(status="cancelled", error="KeyboardInterrupt")
        _finish(record, results_dir, tracker)
        raise
    path = _finish(record, results_dir, tracker)
    return {
        "run_id": run_id,
        "status": record["status"],
        "path": str(path),
        "primary": record.get("metrics", {}).get("primary"),
    }


def _finish(record: dict, results_dir: Path, tracker: Any) -> Path:
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
    task: Any, tokenizer: Any, cfg: Any, seed: int
) -> tuple[dict[str, DataLoader], dict[str, int]]:
    """Encodes every split; returns its loaders and how many examples each split truncated."""
    collate = partial(task.collate, tokenizer=tokenizer)
    loaders, truncated = {}, {}
    for split, rows in task.splits.items():
        features = task.encode(rows, tokenizer)
        truncated[split] = task.count_truncated(features)
        lengths = [len(f["input_ids"]) for f in features]
        if split == "train":
            batches = LengthGroupedBatchSampler(
                lengths, int(cfg.batch_size), torch.Generator().manual_seed(seed)
            )
        else:
            batches = sorted_batches(lengths, int(cfg.eval_batch_size))
        loaders[split] = DataLoader(features, batch_sampler=batches, collate_fn=collate)
    return loaders, truncated


def _count(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _execute(cfg: Any, run_id: str, tracker: Any) -> dict:
    from peftbench.methods import MethodContext, apply_method, save_trainable
    from peftbench.models import load_backbone
    from peftbench.train import evaluate, train
    from tasks import build_task

    device = pick_device(cfg.device)
    seed_everything(int(cfg.seed))
    memory = PeakMemory(device)
    memory.reset()
    setup_start = time.perf_counter()

    task = build_task(cfg.task)
    backbone = load_backbone(cfg.model, task)
    base_params = _count(backbone.model)
    head_params = sum(_count(getattr(backbone.model, name)) for name in backbone.head_modules)
    context = MethodContext(
        head_modules=backbone.head_modules,
        peft_task_type=task.peft_task_type,
        model_type=backbone.model.config.model_type,
    )
    model = apply_method(backbone.model, cfg.method, context).to(device)
    loaders, truncated = _loaders(task, backbone.tokenizer, cfg.train, int(cfg.seed))
    setup_time = time.perf_counter() - setup_start

    history: list[dict] = []

    def log_row(row: dict) -> None:
        history.append(row)
        tracker.log(row)

    timer, eval_clock = StepTimer(int(cfg.train.warmup_steps_excluded), device), Clock()
    train_start = time.perf_counter()
    result = train(
        model,
        train_loader=loaders["train"],
        dev_loader=loaders["dev"],
        task=task,
        cfg=cfg.train,
        lr=float(cfg.method.lr),
        device=device,
        timer=timer,
        eval_clock=eval_clock,
        log=log_row,
        description=run_id,
    )
    train_time = time.perf_counter() - train_start - eval_clock.seconds
    with eval_clock.measure():
        test = evaluate(model, loaders["test"], task, device)
    log_row({"step": result.steps, **{f"test/{k}": v for k, v in test.items()}})

    trainable = _count(model, trainable_only=True)
    with tempfile.TemporaryDirectory() as tmp:
        artifact_bytes = save_trainable(model, Path(tmp) / "trainable.safetensors")
    return {
        "env": env_info(device),
        "data": {
            "source": str(task.cfg.source.get("file") or task.cfg.source),
            "asset": task.cfg.source.get("asset"),
            "fingerprint": task.fingerprint,
            "n": {split: len(rows) for split, rows in task.splits.items()},
            "n_truncated": truncated,
        },
        "model_source": {"source": backbone.source, "weights": backbone.weights},
        "params": {
            "base": base_params,
            "total": _count(model),
            "trainable": trainable,
            "trainable_pct": 100.0 * trainable / base_params,
            "head": head_params,
            "head_modules": backbone.head_modules,
            "artifact_bytes": artifact_bytes,
        },
        "cost": {
            "setup_time_s": setup_time,
            "train_time_s": train_time,
            "eval_time_s": eval_clock.seconds,
            **timer.summary(),
            "peak_mem_bytes": memory.read(),
        },
        "metrics": {
            "primary": {
                "name": task.primary_metric,
                "split": "test",
                "value": test[task.primary_metric],
                "higher_is_better": task.higher_is_better,
            },
            "dev": result.best_dev,
            "test": test,
            "selected_step": result.best_step,
        },
        "history": history,
    }
