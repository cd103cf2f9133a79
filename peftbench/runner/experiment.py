"""One cell of the matrix: (task, model, method, seed) -> one JSON record.

The order follows the data flow of the design guide: skip if done, seed, load, apply the
method, train under instrumentation, test once at the dev-selected step, measure, record.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from peftbench.assets import cache_root
from peftbench.config.checks import check_model_limits, validate
from peftbench.config.identity import recipe, recipe_hash
from peftbench.config.identity import run_id as make_run_id
from peftbench.errors import ConfigError
from peftbench.launch import exit_codes, slots
from peftbench.measure.costs import compute_cost, count_flops, inference_cost, runs_before
from peftbench.measure.forgetting import ForgettingProbe, is_decoder, probe_length
from peftbench.measure.instrument import (
    EnergyMeter,
    EvalClock,
    PhasedPeakMemory,
    StepTimer,
    ensure_idle,
)
from peftbench.measure.quality import DevWatch, assess
from peftbench.records.predictions import TABLE_KEY, predictions_table
from peftbench.records.redact import scrub
from peftbench.records.schema import SCHEMA_VERSION, Experiment, Metrics, Params, Primary, to_json
from peftbench.records.store import (
    claim_run,
    code_info,
    env_info,
    find_success,
    is_saved,
    keep_record,
    read_record,
    recipe_siblings,
    utc_now,
)
from peftbench.records.tracking import make_tracker
from peftbench.runner import assembly, data_parallel, pinned_source
from peftbench.runner.checkpoint import Checkpointer, Replay, remove_checkpoint
from peftbench.runner.device import device_kind, pick_device, resolve_precision, seed_everything
from peftbench.runner.interrupt import Interrupted, stop_on_signals
from peftbench.runner.memory_guard import capped_memory
from peftbench.runner.outcomes import failure, interruption

if TYPE_CHECKING:
    from peftbench.runner.train import TrainResult  # the annotation only: _fit imports train

log = logging.getLogger("peftbench")


def _hydra_overrides() -> list[str]:
    """The command-line overrides of this job, to re-run it exactly (empty outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def experiment_info(cfg: Any, config: dict) -> dict:
    """What the run is: its names, seed and recipe (the values that define its result)."""
    budget = cfg.method.get("budget_pct")
    kind = device_kind(cfg.device)
    values = recipe(config, device=kind, precision=resolve_precision(cfg.train.precision, kind))
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


def effective_head_lr(method: Any) -> float | None:
    """The task head's own rate, ``method.head_lr * method.lr_scale``, where the method's
    paper gives the head one (FourierFT); None: the head trains at :func:`effective_lr`.
    The grid's scale moves both, so their ratio stays the paper's."""
    if method.get("head_lr") is None:
        return None
    return float(method.head_lr) * float(method.get("lr_scale", 1.0))


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
    # Done runs are skipped before the lock as well as under it: another process checking the
    # same done run holds the lock for that moment, and "under way" would misreport it.
    done = _already_done(cfg, results_dir, run_id)
    if done is not None:
        return done
    with claim_run(results_dir, run_id, enabled=data_parallel.is_main()) as holder:
        if holder is not None:  # the same run is training in another process: not twice
            log.warning("%s: skipped: the same run is under way (%s)", run_id, holder)
            return {"run_id": run_id, "status": "skipped", "path": None}
        return _run_claimed(cfg, results_dir, config, experiment, run_id)


def _already_done(cfg: Any, results_dir: Path, run_id: str) -> dict | None:
    """The skip of a run whose success record exists (unless ``force``), else None.

    It carries the record's dev and primary metrics: a resumed Optuna search reads its done
    trials' scores from it, so it sees the history the interrupted one saw, suggests the same
    next trials and picks its best among all of them.
    """
    done = None if cfg.force else find_success(results_dir, run_id)
    if done is None:
        return None
    log.info("%s: already done, skipping (%s)", run_id, done)
    record, _ = read_record(done)
    metrics = record.metrics if record is not None and record.metrics else Metrics()
    primary = to_json(metrics.primary) if metrics.primary else None
    return {"run_id": run_id, "status": "skipped", "path": str(done), "primary": primary,
            "dev": metrics.dev}  # fmt: skip


def _run_claimed(cfg: Any, results_dir: Path, config: dict, experiment: dict, run_id: str) -> dict:
    """The run, once this process holds its run id: skip if done (it may have finished in
    the process that held the lock a moment ago), else train and record."""
    done = _already_done(cfg, results_dir, run_id)
    if done is not None:
        return done
    drain = exit_codes.draining()
    if drain is not None:  # a chunk of a long sweep ends here: no record, nothing lost
        log.info("%s: not started: draining (%s exists)", run_id, drain)
        return {"run_id": run_id, "status": exit_codes.DEFERRED, "path": None}
    if not pinned_source.holds(run_id):  # its recipe would not be what the sweep ran
        return {"run_id": run_id, "status": exit_codes.SOURCE_MOVED, "path": None}

    task = _prepare(cfg)  # bad names or data stop here: no record, no model loaded
    record: dict = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "status": "running",
        "error": None,
        "created_at": utc_now(),
        "experiment": experiment,
        "config": config,
        "code": code_info() | {"source_digest": pinned_source.current()},
    }
    tracker = make_tracker(
        cfg.tracker if data_parallel.is_main() else OmegaConf.create({"name": "none"}),
        run_id=run_id,
        config=config,
        experiment=experiment,
        results_dir=results_dir,
    )
    _attempt(cfg, task, record, tracker)
    path = _finish(record, results_dir, tracker)
    saved = not data_parallel.is_main() or is_saved(path, results_dir)  # or in a fallback
    if saved and record["status"] == "success" and not cfg.train.get("keep_checkpoints"):
        remove_checkpoint(results_dir, run_id)  # the record now holds everything
    return {
        "run_id": run_id,
        "status": record["status"] if saved else "unsaved",
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
        record.update(failure(error, cfg))
        log.error("%s: %s: %s", run_id, record["status"].upper(), record["error"])
        if not data_parallel.is_main():
            raise  # torchrun then stops rank 0, which would wait for this rank forever
    except Interrupted as stop:  # the scheduler or the user ends the sweep: say where it was
        record.update(interruption(stop))
        _finish(record, Path(cfg.results_dir), tracker)
        print(f"peftbench: {run_id}: {record['error']}", file=sys.stderr, flush=True)
        raise SystemExit(stop.exit_code) from None
    finally:
        slots.release_gpu()  # the next run of this worker process may take another


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
    from peftbench.errors import DataError
    from tasks import TASK_KINDS, build_task
    from tasks.metrics import METRICS
    from tasks.readers import READERS
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
        folder = fetch(cfg.model.source.asset)  # the archive's sha256 checked when fetched
        check_weights(cfg.model.source.asset)  # and the unpacked weights before every run
        check_model_limits(cfg, folder)  # max_length and rank against its config.json
    return task


def _finish(record: dict, results_dir: Path, tracker: Any) -> Path | None:
    if not data_parallel.is_main():
        return None  # a data-parallel run has one record, written by rank 0
    record["finished_at"] = utc_now()
    path = keep_record(record, results_dir, predictions=record.pop(TABLE_KEY, None))
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


@dataclass
class SetUp:
    """Stage 1: the model with its method applied, on its device, and the data loaders."""

    device: torch.device
    model: torch.nn.Module
    backbone: Any  # peftbench.models.backbones.Backbone: tokenizer, head modules, source, weights
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
    startup_s: float | None  # process start to this run (its first run only)


@dataclass
class Fit:
    """Stage 2: training with dev selection, and what it was measured by."""

    result: Any  # peftbench.runner.train.TrainResult
    history: list[dict]
    timer: StepTimer
    eval_clock: EvalClock
    checkpoint: Checkpointer
    log_row: Callable[[dict], None]
    energy: EnergyMeter  # over the train() call, its evaluations booked apart
    watch: DevWatch  # every dev evaluation's distinct predictions; the selected step's


@dataclass
class Measures:
    """Stage 4: parameters, artifact size, FLOPs, memory and inference speed."""

    trainable: int
    stored: int  # what the trained delta keeps: a prompt encoder counted as its prompt
    total: int
    artifact_bytes: int
    compute: dict
    peak_memory: dict
    inference: dict | None
    inference_measured_in: str | None  # instrument.inference=once: the seed that has it
    forgetting: dict | None


def _execute(cfg: Any, run_id: str, tracker: Any, task: Any) -> dict:
    """The cell's stages: set up, fit, evaluate on test once, measure, then the record;
    each stage's wall time goes into ``cost.wall_parts_s`` (what a run spends where)."""
    clock = _PartClock()
    setup = _set_up(cfg, task)
    clock.part("setup_s")
    fit = _fit(cfg, run_id, tracker, task, setup)
    clock.part("fit_s")
    dev_eval_s = fit.eval_clock.seconds  # the test evaluation books to the same clock
    test = _evaluate_test(cfg, task, setup, fit)
    clock.part("test_s")
    measures = _measure(cfg, run_id, setup, fit, clock)
    sections = _record_sections(task, setup, fit, test, measures)
    clock.part("predictions_s")
    cost = sections["cost"]
    cost["wall_s"], cost["wall_parts_s"] = _wall(clock, fit.result, dev_eval_s, setup.startup_s)
    return sections


def _wall(
    clock: _PartClock, result: TrainResult, dev_eval_s: float, startup: float | None
) -> tuple[float, dict]:
    """The run's wall time and its stages in order, the fit split into training steps, dev
    evaluations and the loop's own rest (logging, checkpoints); ``startup_s`` came before the
    run. A resumed run's loop began in an earlier process: its time there counts too (not
    that process's set-up), so the parts still add up to the wall time."""
    parts = dict(clock.parts)
    fit_s, train_s = parts.pop("fit_s") + result.resumed_s, result.train_s
    return clock.total() + result.resumed_s, {
        "startup_s": startup,
        "setup_s": parts.pop("setup_s"),
        "train_s": train_s,
        "dev_eval_s": dev_eval_s,
        "loop_other_s": max(0.0, fit_s - train_s - dev_eval_s),
        **parts,
    }


def _process_startup_s() -> float:
    """Seconds from this process's start to its first run: imports, config composition."""
    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())


def _set_up(cfg: Any, task: Any) -> SetUp:
    from peftbench.methods.base import count_params, is_head_param

    device = pick_device(cfg.device)
    data_parallel.init(device)
    threads = slots.torch_threads(cfg.train.get("threads", "auto"))
    if threads is not None:  # parallel runs share the cores instead of oversubscribing them
        torch.set_num_threads(threads)
    seed_everything(int(cfg.seed))
    ensure_idle(device)  # a leak from the previous job of this process would skew this one
    fresh_process = runs_before() == 0
    startup_s = _process_startup_s() if fresh_process else None  # later runs pay none of it
    memory = PhasedPeakMemory(device, "setup")  # set-up, training and evaluation apart
    clock = _PartClock()

    cache_dir = cache_root() / "tokenized" if cfg.data_cache else None
    loaded = assembly.load(cfg, task, device, cache_dir=cache_dir, on_part=clock.part)
    backbone = loaded.backbone
    base_params = count_params(backbone.model)
    head_params = count_params(backbone.model, lambda n, _: is_head_param(n, backbone.head_modules))
    probe = _forgetting_reference(cfg, task, backbone, device)
    clock.part("forgetting_s")  # the probe's reference read, before the method
    adapted = assembly.adapt(loaded, cfg, device, on_part=clock.part)
    memory.switch("train")
    return SetUp(
        device, adapted.model, backbone, loaded.loaders, loaded.data_facts, adapted.budget,
        adapted.autocast_dtype, base_params, head_params, clock.total(), clock.parts, memory,
        fresh_process, probe, startup_s,
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
    from peftbench.methods.base import checkpoint_state, step_hook
    from peftbench.runner.train import train

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

    watch = DevWatch(task)
    extras = {"history": Replay(history, tracker.log), "timer": timer, "clock": eval_clock}
    method = checkpoint_state(setup.model)
    required = {"method": method} if method is not None else {}
    checkpoint = Checkpointer.for_run(cfg, run_id, {**extras, "dev_watch": watch}, required)
    with energy.measure():  # the counter read at start and end (RAPL: polled in between)
        result = train(
            data_parallel.wrap(setup.model, setup.device),  # gradients averaged across ranks
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
            checkpoint=checkpoint if data_parallel.world_size() == 1 else None,
            observe=watch.observe,
            head_lr=effective_head_lr(cfg.method),
            head_modules=setup.backbone.head_modules,
        )
    return Fit(result, history, timer, eval_clock, checkpoint, log_row, energy, watch)


def _evaluate_test(cfg: Any, task: Any, setup: SetUp, fit: Fit) -> tuple[dict, dict] | None:
    """Stage 3: the test split, once, at the dev-selected step: its metrics and per-example
    outputs; and any extra test split (``test_<name>``, e.g. MNLI's mismatched set) with the
    same model, its metrics recorded as ``<metric>_<name>``. None under
    ``train.evaluate_test=false`` (a tuning stage: test stays sealed)."""
    from peftbench.runner.train import evaluate
    from tasks.splits import EXTRA_TEST_PREFIX, is_extra_test

    if not cfg.train.get("evaluate_test", True):
        return None
    test: dict = {}
    outputs: dict = {}  # the test split's per-example outputs: the predictions file's rows
    for split in ["test", *sorted(s for s in setup.loaders if is_extra_test(s))]:
        suffix = "" if split == "test" else "_" + split[len(EXTRA_TEST_PREFIX) :]
        with fit.eval_clock.measure():
            scores = evaluate(
                setup.model, setup.loaders[split], task, setup.device, setup.autocast_dtype,
                outputs if split == "test" else None,
            )  # fmt: skip
        test |= {f"{k}{suffix}": v for k, v in scores.items()}
    fit.log_row({"step": fit.result.steps, **{f"test/{k}": v for k, v in test.items()}})
    return test, outputs


def _measure(cfg: Any, run_id: str, setup: SetUp, fit: Fit, clock: _PartClock) -> Measures:
    from peftbench.methods import save_trainable
    from peftbench.methods.base import count_params, count_trainable, prompt_reparametrisation

    model, device = setup.model, setup.device
    # After training, so the counted step can change nothing the run measures or learns
    # (and a fault at step k stays at step k); its memory is neither phase's.
    with setup.memory.phase("flop_count"):
        counted = count_flops(model, setup.loaders["train"], device, setup.autocast_dtype)
    clock.part("flop_count_s")
    trainable, total = count_params(model, lambda _, p: p.requires_grad), count_params(model)
    stored = trainable - prompt_reparametrisation(data_parallel.unwrap(model))
    if setup.budget is not None:  # what the sized method really trains, head excluded
        reached = count_trainable(model, setup.backbone.head_modules)[0]
        setup.budget["reached_pct"] = 100.0 * reached / setup.budget["base"]
    with tempfile.TemporaryDirectory() as tmp:
        artifact_bytes = save_trainable(model, Path(tmp) / "trainable.safetensors")
    clock.part("artifact_s")
    # per phase, before the inference measurements; the top level is training's peak
    peak_memory = {**setup.memory.summary(), "fresh_process": setup.fresh_process}
    compute = compute_cost(
        model, fit.timer, trainable, device, cfg.instrument, counted, setup.autocast_dtype
    )
    forgetting = None
    if setup.forgetting is not None:  # before inference: merging rewrites the model
        with setup.memory.phase("forgetting"):
            forgetting = setup.forgetting.result(model)
    clock.part("forgetting_s")
    measured_in = _inference_measured_in(cfg, run_id)
    inference = (
        inference_cost(model, setup.loaders["test"], device, cfg.method)
        if cfg.instrument.inference and measured_in is None and data_parallel.is_main()
        else None  # off, another seed's record has it, or a rank other than 0
    )
    clock.part("inference_s")
    return Measures(
        trainable, stored, total, artifact_bytes, compute, peak_memory, inference, measured_in,
        forgetting,
    )  # fmt: skip


def _inference_measured_in(cfg: Any, run_id: str) -> str | None:
    """Under ``instrument.inference=once``: the run id of another seed of this recipe whose
    record in results_dir holds the inference latency (the seed cannot change it), else None."""
    if cfg.instrument.inference != "once":
        return None
    for record in recipe_siblings(Path(cfg.results_dir), run_id):
        if (record.get("cost") or {}).get("inference") is not None:
            return record["run_id"]
    return None


def _record_sections(
    task: Any, setup: SetUp, fit: Fit, test: tuple[dict, dict] | None, measures: Measures
) -> dict:
    """Stage 5: the record's sections from the stages' results (records/store.py writes it;
    the predictions table goes beside the record, under ``TABLE_KEY`` until then)."""
    from peftbench.methods.base import params_facts

    test_metrics, test_outputs = test if test is not None else (None, None)
    return {
        "env": {**env_info(setup.device), "distributed": data_parallel.info()},
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
                stored=measures.stored,
                stored_pct=100.0 * measures.stored / setup.base_params,
                head=setup.head_params,
                head_modules=setup.backbone.head_modules,
                artifact_bytes=measures.artifact_bytes,
                budget=setup.budget,
                mask_by_module=params_facts(setup.model).get("mask_by_module"),
            )
        ),
        "cost": _cost_section(setup, fit, measures),
        # the probe text before vs after training (measure/forgetting.py, docs/MEASUREMENT.md)
        "forgetting": measures.forgetting,
        "metrics": to_json(_metrics(task, fit, test_metrics)),
        # collapsed to a constant prediction, and each split's constant baseline
        "quality": assess(task, fit.watch, test_outputs["refs"] if test_outputs else None),
        "history": fit.history,
        TABLE_KEY: predictions_table(task, setup.loaders, fit.watch.dev_outputs, test_outputs),
    }


def _metrics(task: Any, fit: Fit, test: dict | None) -> Metrics:
    """Test once at the selected step; a sealed run's primary is its dev score (split dev)."""
    split, scores = ("test", test) if test is not None else ("dev", fit.result.best_dev)
    return Metrics(
        primary=Primary(
            task.primary_metric, split, scores.get(task.primary_metric), task.higher_is_better
        ),
        dev=fit.result.best_dev,
        test=test,
        selected_step=fit.result.best_step,
        implementation=task.metric_implementation,
    )


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
        "inference_measured_in": measures.inference_measured_in,
        # training's energy (evaluations apart), per padded token as FLOPs count them
        "energy": fit.energy.summary(fit.timer.padded_tokens_all),
    }
