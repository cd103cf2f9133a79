"""A fair hyperparameter search per method, then multi-seed final runs of each best trial.

``peftbench tune --methods lora,prefix,adapter --trials 12 --seeds 0,1,2 task=polarity`` runs,
for each method (and each ``--tasks`` entry):

1. an Optuna search (``+experiment=tune``: TPE sampler, fixed sampler seed, the same number
   of trials for every method) over the learning rate, within 10x either way of the method's
   paper value, and over the method's size knob (``budget_knob`` in its YAML: LoRA's rank,
   an adapter's bottleneck...), within 4x either way of its default. Trials train on the
   search seed (:data:`SEARCH_SEED`, none of the final seeds) with test sealed
   (``train.evaluate_test=false``: their records hold no test score) and are ranked on the
   dev metric at the selected step.
2. the final runs: the best trial's lr and size with every final seed, each evaluating test
   once. No trial is a final run: the seed whose dev chose the recipe reports no test.

Trials and final runs share one results folder (by default ``results/tuned``); the report
labels each recipe by what differs (``lora (lr=0.0012, r=16)``).

Each step is a ``peftbench run -m ...`` sweep (:mod:`peftbench.launch.commands`);
``--dry-run`` prints them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from peftbench.config.paths import CONF_DIR
from peftbench.launch import commands, exit_codes

#: The trials' seed (``conf/experiment/tune.yaml``); a final seed may not be it.
SEARCH_SEED = 100
LR_SPAN = 10.0  # search lr in [lr / 10, lr * 10], log scale
KNOB_SPAN = 4  # search the size knob in [knob / 4, knob * 4], log scale


def objective(summary: Any) -> float:
    """What the Optuna sweeper maximises: the dev primary metric, negated if lower is better.

    A run that failed or diverged scores NaN, which Optuna records as a failed trial.
    """
    if not isinstance(summary, dict) or not summary.get("dev") or not summary.get("primary"):
        return math.nan
    primary = summary["primary"]
    value = float(summary["dev"][primary["name"]])
    return value if primary["higher_is_better"] else -value


def is_tuning() -> bool:
    """Whether this Hydra job is a trial of the Optuna sweeper (which needs a number back)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    return "optuna" in str(HydraConfig.get().sweeper.get("_target_", "")).lower()


def search_space(method: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """Optuna sweep overrides for a method: its lr and, if it has one, its size knob."""
    cfg = OmegaConf.load(conf_dir / "method" / f"{method}.yaml")
    lr = float(cfg.lr)
    space = [f"method.lr=tag(log, interval({lr / LR_SPAN:g}, {lr * LR_SPAN:g}))"]
    knob = cfg.get("budget_knob")
    if knob:
        value = OmegaConf.select(cfg, knob)
        if isinstance(value, int):  # int(): Hydra's intervals are float unless cast
            low, high = max(1, value // KNOB_SPAN), value * KNOB_SPAN
            space.append(f"method.{knob}=int(tag(log, interval({low}, {high})))")
        else:
            low, high = float(value) / KNOB_SPAN, float(value) * KNOB_SPAN
            space.append(f"method.{knob}=tag(log, interval({low:g}, {high:g}))")
    return space


def search_command(
    method: str, *, trials: int, results: Path, sweep_dir: Path, overrides: list[str]
) -> list[str]:
    return [
        "+experiment=tune",
        f"method={method}",
        *search_space(method),
        f"hydra.sweeper.n_trials={trials}",
        f"results_dir={results}",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]


def best_params(sweep_dir: Path) -> dict:
    """The best trial's parameters, from the sweeper's ``optimization_results.yaml``."""
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    return dict(results.best_params)


def final_command(
    method: str, best: dict, *, seeds: str, results: Path, overrides: list[str]
) -> list[str]:
    chosen = [f"{key}={value}" for key, value in best.items()]
    return [f"method={method}", *chosen, f"seed={seeds}", f"results_dir={results}", *overrides]


def flow(
    methods: list[str],
    *,
    trials: int,
    seeds: str,
    results: Path,
    overrides: list[str],
    tasks: list[str] | None = None,
    dry_run: bool = False,
) -> int:
    """Searches each (task, method), then runs its best trial with every seed.

    Returns:
        0; 1 when a run failed (recorded; the other runs still ran); or the exit code of
        the command that stopped the pipeline (bad input, a stop signal).

    Raises:
        ConfigError: a final seed is the search seed (its dev chose the recipe).
    """
    from peftbench.launch.protocol import check_seeds

    searched = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == "seed"]
    search_seeds = [int(s) for s in searched[-1].split(",")] if searched else [SEARCH_SEED]
    check_seeds([int(s) for s in str(seeds).split(",") if s.strip()], search_seeds)
    failed = 0  # exit 1 once any run failed (launch/exit_codes.py), after all the rest ran
    for task in tasks or [None]:
        cell = [f"task={task}"] if task else []
        for method in methods:
            name = f"{task or 'default'}--{method}"
            sweep_dir = results / "tuning" / name
            search = search_command(
                method,
                trials=trials,
                results=results,
                sweep_dir=sweep_dir,
                overrides=cell + overrides,
            )
            code = commands.call(search, tag="tune", dry_run=dry_run)
            if not exit_codes.carry_on(code):  # failed trials are recorded: search goes on
                return code
            failed = failed or code
            best = {"method.lr": "<best>"} if dry_run else best_params(sweep_dir)
            print(f"[tune] {name}: best {best}", flush=True)
            final = final_command(
                method, best, seeds=seeds, results=results, overrides=cell + overrides
            )
            code = commands.call(final, tag="tune", dry_run=dry_run)
            if not exit_codes.carry_on(code):
                return code
            failed = failed or code
    return failed
