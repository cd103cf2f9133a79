"""Costs from a clean cost run, for the report (issue 38, protocol item 6 of docs/benchmarks).

A benchmark trains its runs two at a time on two cores, so each run's record times its
neighbour too (version 1: seed-0 runs of one wnut16 recipe trained 0.94-1.67x as long as
seeds 1-2). A clean cost run measures every method alone in turn, each in a fresh process,
on an idle machine (``peftbench costs methods --fresh-process --out costs/<task>.json``).
Given to the report (``peftbench report --costs costs/*.json``), its step time and training
memory replace the records' train time, throughput and peak memory in the table, the CSV and
the plots, and its forward time (as served: merged where the method merges) is a column of
its own.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

#: What a cost file says it is (written by ``peftbench.measure.overhead.write_methods``).
KIND = "peftbench.method_costs"
#: The clean columns, and the record columns each one replaces wherever it is present.
REPLACES = {
    "step_ms_clean": ("train_time_s", "tokens_per_s"),
    "train_mem_clean_bytes": ("peak_mem_bytes",),
    "forward_ms_clean": (),  # new: the benchmark's runs measure no latency (inference=false)
}
KEYS = ("task", "model", "method")
#: How a file's methods were kept apart (``costs methods`` writes it since --fresh-process).
ISOLATION = "clean_isolation"
#: The day a file was measured: this shared machine's pace moves between days (the same
#: polarity cost run took 1.7-2.3x as long a step on 2026-12-07 as on 2026-12-05).
MEASURED_ON = "clean_measured_on"


class CostsFileError(ValueError):
    """A --costs file that is missing, unreadable or not a ``costs methods`` result."""


def load(paths: list[Path]) -> pd.DataFrame:
    """One row per (task, model, method) measured: KEYS and the columns of :data:`REPLACES`.

    Raises:
        CostsFileError: a file is missing, not JSON, not a cost file, or two files measured
            the same task and model (which one would count is not for the report to guess).
    """
    rows, seen = [], {}
    for path in paths:
        result = _read(Path(path))
        key = (result["task"], result["model"])
        if key in seen:
            raise CostsFileError(
                f"{seen[key]} and {path} both measured {key[0]} on {key[1]}; pass one of them"
            )
        seen[key] = path
        on_cpu = result["device"] == "cpu"
        for method, row in result["medians"].items():
            memory = row["train_rise_bytes"] if on_cpu else row["train_peak_bytes"]
            rows.append({
                "task": result["task"], "model": result["model"], "method": method,
                "step_ms_clean": row["step_p50_s"] * 1e3,
                "train_mem_clean_bytes": math.nan if memory is None else float(memory),
                "forward_ms_clean": _deployed_forward_ms(row),
                ISOLATION: result.get("isolation", "one process"),  # older files: one process
                MEASURED_ON: str(result.get("measured_at", ""))[:10] or None,
            })  # fmt: skip
    return pd.DataFrame(rows, columns=[*KEYS, *REPLACES, ISOLATION, MEASURED_ON])


def _deployed_forward_ms(row: dict) -> float:
    """Forward time as the method would be served: merged where it merges; NaN in files
    written before forward times were measured."""
    seconds = row.get("forward_merged_p50_s") or row.get("forward_p50_s")
    return math.nan if seconds is None else 1e3 * seconds


def _read(path: Path) -> dict:
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise CostsFileError(f"no cost file {path}; write one with `peftbench costs methods "
                             f"--out {path} task=<task>`") from None  # fmt: skip
    except (OSError, json.JSONDecodeError) as error:
        raise CostsFileError(f"cannot read cost file {path}: {error}") from None
    if not isinstance(result, dict) or result.get("kind") != KIND:
        raise CostsFileError(
            f'{path} is not a `peftbench costs methods --out` file (no "kind": "{KIND}")'
        )
    return result


def attach(runs: pd.DataFrame, clean: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with the clean columns of its (task, model, method); NaN where not measured."""
    if clean.empty:
        return runs
    return runs.merge(clean, on=list(KEYS), how="left", validate="many_to_one").set_axis(runs.index)


def hidden(present: list[str]) -> set[str]:
    """The record columns that the clean columns among ``present`` replace."""
    return {old for new, olds in REPLACES.items() if new in present for old in olds}
