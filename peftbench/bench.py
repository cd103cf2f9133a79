"""``peftbench bench overhead``: what does the harness cost compared with a bare loop?

The same model, method, data and number of steps run (a) through a full peftbench run
(Hydra config, instrumentation, tracker, record) and (b) through a minimal PyTorch + peft
loop followed by the dev and test forward passes that the run evaluates, alternately, several
times in one process, so both see the same machine state. Printed: the ratios (a)/(b) of the
median step time, of the training wall time per step, and of the peak resident memory.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import torch

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose(overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def harness_run(cfg: Any) -> dict:
    """(a) One full peftbench run; returns the step and memory figures of its record."""
    from peftbench.experiment import run

    record = json.loads(Path(run(cfg)["path"]).read_text())
    if record["status"] != "success":
        raise RuntimeError(f"the harness run failed: {record['error']}")
    cost = record["cost"]
    steps = cost["step_time_s"]["n"] + cost["step_time_s"]["warmup_n"]
    return {
        "step_p50_s": cost["step_time_s"]["p50"],
        "wall_per_step_s": cost["train_time_s"] / steps,
        "peak_rss_bytes": cost["peak_mem_bytes"]["rss"],
    }


def bare_run(cfg: Any) -> dict:
    """(b) The same work in a minimal loop: load, wrap, AdamW + linear schedule, no extras."""
    from peftbench.experiment import (
        _accelerate,
        _loaders,
        effective_lr,
        pick_device,
        seed_everything,
    )
    from peftbench.instrument import PeakMemory
    from peftbench.methods import MethodContext, apply_method
    from peftbench.models import load_backbone
    from peftbench.train import autocast
    from tasks import build_task

    device = pick_device(cfg.device)
    memory = PeakMemory(device)
    memory.reset()
    seed_everything(int(cfg.seed))
    task = build_task(cfg.task)
    backbone = load_backbone(cfg.model, task)
    context = MethodContext(
        head_modules=backbone.head_modules,
        peft_task_type=task.peft_task_type,
        model_type=backbone.model.config.model_type,
    )
    model = apply_method(backbone.model, cfg.method, context).to(device)
    # the harness's precision (bf16 autocast on CUDA by default) and TF32: the same arithmetic
    autocast_dtype = _accelerate(model, device, cfg.train)
    loaders, _ = _loaders(task, backbone.tokenizer, cfg.train, seed=int(cfg.seed), cache_dir=None)
    steps, warmup = int(cfg.train.max_steps), int(cfg.train.warmup_steps_excluded)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=effective_lr(cfg.method), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / steps)
    model.train()
    durations = []
    start = time.perf_counter()
    for batch in islice(cycle(loaders["train"]), steps):
        step_start = time.perf_counter()
        with autocast(device, autocast_dtype):
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        durations.append(time.perf_counter() - step_start)
    wall = time.perf_counter() - start
    _forward_passes(model, [loaders["dev"], loaders["test"]], device, autocast_dtype)
    return {
        "step_p50_s": statistics.median(durations[warmup:]),
        "wall_per_step_s": wall / steps,
        "peak_rss_bytes": memory.read()["rss"],
    }


@torch.no_grad()
def _forward_passes(
    model: torch.nn.Module, loaders: list, device: torch.device, dtype: torch.dtype | None = None
) -> None:
    """The harness evaluates dev once (at the last step) and test once: the reference does
    the same forward passes, so the memory ratio compares the same work."""
    from peftbench.train import autocast

    model.eval()
    for loader in loaders:
        for batch in loader:
            with autocast(device, dtype):
                model(**{k: v.to(device) for k, v in batch.items()})


def overhead(overrides: list[str], *, steps: int, repeats: int) -> dict:
    """Runs (a) and (b) alternately ``repeats`` times; returns per-run figures and ratios."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(
            [
                *overrides,
                f"train.max_steps={steps}",
                f"train.eval_every_steps={steps}",
                "instrument.inference=false",
                "force=true",
                f"results_dir={tmp}",
            ]
        )
        runs: dict[str, list[dict]] = {"harness": [], "bare": []}
        for i in range(repeats):
            # ABBA order, so warm-up effects of going first or second cancel out
            order = ("harness", "bare") if i % 2 == 0 else ("bare", "harness")
            for kind in order:
                runs[kind].append(harness_run(cfg) if kind == "harness" else bare_run(cfg))

    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[kind])

    keys = ("step_p50_s", "wall_per_step_s", "peak_rss_bytes")
    ratios = {key: median("harness", key) / median("bare", key) for key in keys}
    return {"runs": runs, "ratios": ratios, "steps": steps, "repeats": repeats}


def format_overhead(result: dict) -> str:
    lines = [f"{'':18}{'harness':>12}{'bare':>12}{'ratio':>8}"]
    for key, ratio in result["ratios"].items():
        harness = statistics.median(r[key] for r in result["runs"]["harness"])
        bare = statistics.median(r[key] for r in result["runs"]["bare"])
        scale, unit = (1 / 2**20, "MiB") if key.endswith("bytes") else (1000, "ms")
        lines.append(
            f"{key:18}{harness * scale:>9.1f}{unit:>3}{bare * scale:>9.1f}{unit:>3}{ratio:>8.3f}"
        )
    lines.append(f"({result['repeats']} interleaved repeats of {result['steps']} steps; medians)")
    return "\n".join(lines)
