"""Run records (one JSON file per run) -> one flat pandas row per record.

Records are the source of truth; everything in ``analysis`` is a view built from them.
Nothing here edits a record.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from peftbench.records.schema import Record
from peftbench.records.store import read_record

SUCCESS = "success"
SYNTHETIC = "synthetic"
#: ``load_records(...).attrs[REJECTED]``: the files skipped as not valid records, and why.
REJECTED = "rejected"

# Column order of the frame returned by load_records (also used for an empty frame).
COLUMNS = [
    "run_id", "status", "error", "created_at",
    "task", "task_version", "model", "method", "method_label", "seed", "sweep_id", "weights",
    "budget_pct",
    "primary_name", "primary_split", "primary_value", "higher_is_better", "dev_value",
    "total_params", "trainable", "trainable_pct", "stored_pct", "artifact_bytes",
    "peak_alloc_bytes", "peak_rss_bytes", "peak_mem_bytes",
    "train_time_s", "eval_time_s", "wall_s", "tokens_per_s", "samples_per_s",
    "forgetting", "forgetting_measure", "energy_j", "energy_j_per_token",
    "git_sha", "git_dirty", "device", "path",
    "recipe_hash", "recipe", "config",
    "train_size", "n_train", "metric_impl", "collapsed", "collapse_reason",
]  # fmt: skip

# Config keys (dotted prefixes) that cannot change a result, for records written before
# the recipe was recorded. For new records ``peftbench/config/identity.py`` is the source of
# truth:
# they carry ``experiment.recipe`` and ``experiment.recipe_hash``, and this list is not used.
LEGACY_NOT_IN_RECIPE = (
    "seed", "results_dir", "sweep_id", "force", "tracker", "data_cache", "device",
    "train.threads", "train.log_every_steps", "train.eval_batch_size", "train.num_workers",
    "train.checkpoint_every_steps", "train.keep_checkpoints", "instrument", "hydra",
)  # fmt: skip
HASH_CHARS = 8


class RecordWarning(UserWarning):
    """A file in the results directory was skipped because it is not a valid record."""


def load_records(results_dir: str | Path) -> pd.DataFrame:
    """Loads every ``*.json`` record under ``results_dir`` (recursively) into a flat frame.

    Files that cannot be read, are not JSON, are not records of a readable schema, or hold
    values no run can produce (an accuracy of 1.7, a negative time) are skipped with a
    :class:`RecordWarning`, so one bad file never hides all the others; the frame's
    ``attrs[REJECTED]`` lists them with the reason.

    Args:
        results_dir: Directory holding run records, possibly in sub-folders.

    Returns:
        One row per valid record with the columns in :data:`COLUMNS`; ``created_at`` is a
        UTC timestamp (NaT when missing). ``peak_mem_bytes`` is the accelerator's allocated
        peak when recorded, else the process RSS peak. ``recipe`` is the flat dict of the
        values that define the result (the record's own, or :func:`legacy_recipe` of its
        config), and ``config`` the flat resolved config. ``method_label`` is the method and
        its budget; :func:`quality_runs` adds what tells recipes apart.
    """
    rows, rejected = [], []
    for path in sorted(Path(results_dir).rglob("*.json")):
        record, reason = _read(path)
        if reason:
            warnings.warn(f"skipping {path}: {reason}", RecordWarning, stacklevel=2)
            if _is_rejected_record(path, reason):
                rejected.append((path, reason))
            continue
        rows.append(_flatten(record, path))
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs[REJECTED] = rejected  # (path, why): the report lists them in rejected.md
    df["created_at"] = pd.to_datetime(df["created_at"], utc=True, format="ISO8601", errors="coerce")
    return df


def _read(path: Path) -> tuple[Record | None, str | None]:
    """Returns (record, None) or (None, why the file is not a usable record).

    The same test as the sweep's "already done" (``peftbench.records.store.read_record``):
    the schema, and for a success, values a run can produce (metrics within their range,
    costs finite and >= 0), so an impossible score is never shown, let alone bolded best.
    """
    return read_record(path)


def _is_rejected_record(path: Path, reason: str) -> bool:
    """Whether a skipped file was meant as a record (listed in rejected.md), rather than
    another JSON that lives under results (wandb's, Hydra's)."""
    return path.parent.name == "records" or not reason.startswith("not a run record")


def _get(section: dict[str, Any] | None, *keys: str) -> Any:
    """Nested lookup in a measurement section; None when any level is missing or null."""
    node: Any = section
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def flatten_config(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"method.peft.r": 8, ...}`` (lists stay values)."""
    if not isinstance(tree, Mapping):
        return {prefix[:-1]: tree} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten_config(value, f"{prefix}{key}."))
    return flat


def legacy_recipe(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The recipe of a record written before records carried one: its flat config minus
    the keys of :data:`LEGACY_NOT_IN_RECIPE`. New records carry ``experiment.recipe``, made
    by ``peftbench/config/identity.py`` (the source of truth); this is only the fallback.

    Args:
        config: The record's resolved config (nested), or None.

    Returns:
        Dotted key -> value, sorted by key.
    """
    flat = flatten_config(config or {})
    out = {
        k: v
        for k, v in flat.items()
        if not any(k == n or k.startswith(n + ".") for n in LEGACY_NOT_IN_RECIPE)
    }
    return dict(sorted(out.items()))


def _recipe_hash(recipe: Mapping[str, Any]) -> str:
    text = json.dumps(recipe, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]


def _stored_pct(params: Any, config: Mapping[str, Any] | None) -> float | None:
    """``params.stored_pct``; in records from before it, the trainable share wherever the
    method trains no prompt reparametrisation (then the two are equal by definition:
    ``peftbench.methods.base.prompt_reparametrisation``), else unknown (None)."""
    if params is None or params.stored_pct is not None:
        return params and params.stored_pct
    peft = ((config or {}).get("method") or {}).get("peft") or {}
    reparametrised = peft.get("peft_type") == "P_TUNING" or bool(peft.get("prefix_projection"))
    return None if reparametrised else params.trainable_pct


def _flatten(record: Record, path: Path) -> dict[str, Any]:
    exp, params, primary, cost = record.experiment, record.params, record.primary, record.cost
    recipe = exp.recipe if isinstance(exp.recipe, dict) else legacy_recipe(record.config)
    alloc = _get(cost, "peak_mem_bytes", "allocated")
    rss = _get(cost, "peak_mem_bytes", "rss")
    implementation = (record.metrics and record.metrics.implementation) or {}
    return {
        "run_id": record.run_id,
        "status": record.status,
        "error": record.error,
        "created_at": record.created_at,
        "task": exp.task,
        "task_version": exp.task_version,
        "model": exp.model,
        "method": exp.method,
        "method_label": method_label(exp.method, exp.budget_pct),
        "seed": exp.seed,
        "sweep_id": exp.sweep_id,
        "weights": exp.weights,
        "budget_pct": exp.budget_pct,
        "primary_name": primary and primary.name,
        "primary_split": primary and primary.split,
        "primary_value": primary and primary.value,
        # the same metric on dev at the selected step: what selection and tuning rank
        "dev_value": _get(record.metrics and record.metrics.dev, primary.name) if primary else None,
        "higher_is_better": primary and primary.higher_is_better,
        "total_params": params and params.total,
        "trainable": params and params.trainable,
        "trainable_pct": params and params.trainable_pct,
        "stored_pct": _stored_pct(params, record.config),
        "artifact_bytes": params and params.artifact_bytes,
        "peak_alloc_bytes": alloc,
        "peak_rss_bytes": rss,
        "peak_mem_bytes": alloc if alloc is not None else rss,
        "train_time_s": _get(cost, "train_time_s"),
        "eval_time_s": _get(cost, "eval_time_s"),
        "wall_s": record.wall_s,  # the run's whole time: what a benchmark's pace counts
        "tokens_per_s": _get(cost, "tokens_per_s"),
        "samples_per_s": _get(cost, "samples_per_s"),
        # the probe text before vs after training (docs/MEASUREMENT.md); none before it existed
        "forgetting": _get(record.forgetting, "value"),
        "forgetting_measure": _get(record.forgetting, "measure"),
        "energy_j": _get(cost, "energy", "joules"),
        "energy_j_per_token": _get(cost, "energy", "joules_per_token"),
        "git_sha": record.code.get("git_sha"),
        "git_dirty": record.code.get("git_dirty"),
        "device": _get(record.env, "device"),
        "path": str(path),
        "recipe_hash": exp.recipe_hash or _recipe_hash(recipe),
        "recipe": recipe,
        "config": flatten_config(record.config or {}),
        # task.train_size as asked (None: the whole split) and the examples really trained on
        "train_size": _get(record.data, "train_size_requested"),
        "n_train": _get(record.data, "n", "train"),
        # who scored the primary metric: "builtin", or the evaluate metric and its revision
        "metric_impl": implementation.get(primary.name) if primary else None,
        # a success that learnt no more than a constant prediction (None: not assessed)
        "collapsed": _get(record.quality, "collapsed"),
        "collapse_reason": _get(record.quality, "reason"),
    }


def method_label(method: str, budget_pct: float | None) -> str:
    """Row label of a method: runs at different parameter budgets must not be averaged.

    Args:
        method: Method name from the record.
        budget_pct: Trainable-parameter budget in percent, or None when the run had none.

    Returns:
        ``"lora"`` without a budget, ``"lora@0.5%"`` with one.
    """
    if budget_pct is None or (isinstance(budget_pct, float) and math.isnan(budget_pct)):
        return method
    return f"{method}@{budget_pct:g}%"


_UNSET = object()


def recipe_labels(df: pd.DataFrame) -> pd.Series:
    """Row labels that keep the recipes of one (task, model, method) apart.

    One recipe keeps the plain label (``lora``, ``lora@0.5%``); several are labelled by the
    keys whose values differ between them, each by its last dotted component (two when the
    last is shared by differing keys), in key order: ``lora (lr=0.001, r=16)``. A key one
    recipe lacks shows as ``unset``; recipes with equal values but different hashes fall
    back to ``recipe=<hash>``.

    Args:
        df: Frame with method, budget_pct, task, model, recipe_hash and recipe columns.

    Returns:
        The label per row, aligned with ``df``.
    """
    labels = pd.Series(
        [method_label(m, b) for m, b in zip(df["method"], df["budget_pct"], strict=True)],
        index=df.index,
        dtype=object,
    )
    for _, group in df.groupby([df["task"], df["model"], labels.copy()], sort=False):
        recipes = dict(zip(group["recipe_hash"], group["recipe"], strict=True))
        if len(recipes) < 2:
            continue
        keys = sorted(set().union(*recipes.values()))
        differ = [k for k in keys if len({_key(r.get(k, _UNSET)) for r in recipes.values()}) > 1]
        names = _short_names(differ)
        for index, hash_ in zip(group.index, group["recipe_hash"], strict=True):
            recipe = recipes[hash_]
            parts = [f"{names[k]}={_show(recipe.get(k, _UNSET))}" for k in differ]
            labels[index] = f"{labels[index]} ({', '.join(parts) or f'recipe={hash_}'})"
    return labels


def _key(value: Any) -> str:
    return "\0unset" if value is _UNSET else json.dumps(value, sort_keys=True, default=str)


def _show(value: Any) -> str:
    if value is _UNSET:
        return "unset"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)


def _short_names(keys: list[str]) -> dict[str, str]:
    """The last dotted component of each key, or as many as it takes to be unique."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[-depth:])
            others = [k for k in keys if k != key and ".".join(k.split(".")[-depth:]) == name]
            if not others:
                break
        names[key] = name
    return names


def parse_where(items: Iterable[str]) -> dict[str, str]:
    """``["method.lr=0.001", ...]`` -> ``{"method.lr": "0.001"}``.

    Raises:
        ValueError: If an item is not ``KEY=VALUE`` with a non-empty key.
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--where needs KEY=VALUE, got {item!r}; e.g. --where method.lr=0.001")
        out[key.strip()] = value.strip()
    return out


def matches(recorded: Any, wanted: str) -> bool:
    """Whether a recorded config value equals a value typed on the command line.

    Numbers compare numerically (``1e-3`` matches 0.001), booleans and null by their YAML
    spellings (true/false, null/none), anything else as text.
    """
    if isinstance(recorded, bool):
        return wanted.lower() in (("true", "yes", "1") if recorded else ("false", "no", "0"))
    if recorded is None:
        return wanted.lower() in ("null", "none", "~")
    if isinstance(recorded, int | float):
        try:
            return math.isclose(float(recorded), float(wanted), rel_tol=1e-9, abs_tol=0.0)
        except ValueError:
            return False
    return str(recorded) == wanted


def select(
    df: pd.DataFrame,
    *,
    task: str | Iterable[str] | None = None,
    model: str | Iterable[str] | None = None,
    method: str | Iterable[str] | None = None,
    sweep: str | Iterable[str] | None = None,
    where: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Keeps the rows matching every given filter; None means no filter on that column.

    Args:
        df: Frame from :func:`load_records`.
        task: Task name or names.
        model: Model name or names.
        method: Method name or names (the name in the record, without budget suffix).
        sweep: Sweep id or ids.
        where: Dotted config key -> wanted value (text, as typed): a record matches when
            its recipe, or else its config, holds the key with that value (:func:`matches`);
            a record without the key does not match.

    Returns:
        The matching rows (a new frame).
    """
    keep = pd.Series(True, index=df.index)
    filters = {"task": task, "model": model, "method": method, "sweep_id": sweep}
    for column, wanted in filters.items():
        if wanted is not None:
            values = [wanted] if isinstance(wanted, str) else list(wanted)
            keep &= df[column].isin(values)
    for key, wanted in (where or {}).items():
        _check_known_key(df, key)
        sources = [r if key in r else c for r, c in zip(df["recipe"], df["config"], strict=True)]
        hits = [key in source and matches(source[key], wanted) for source in sources]
        keep &= pd.Series(hits, index=df.index, dtype=bool)
    return df[keep].copy()


def _check_known_key(df: pd.DataFrame, key: str) -> None:
    """A ``--where`` key that no record has is a typo, not a filter that matches nothing.

    Raises:
        ValueError: naming the key and the nearest key the records do have.
    """
    if df.empty:
        return
    known = set().union(*df["recipe"], *df["config"])
    if key in known:
        return
    from peftbench.errors import closest

    near = closest(key, known)
    hint = f"did you mean {near}?" if near else "use a dotted key of the config, e.g. method.lr"
    raise ValueError(f"--where {key}: no record has this key; {hint}")


def latest_success(df: pd.DataFrame) -> pd.DataFrame:
    """Keeps, per run_id, recipe and kind of weights, the most recent successful record.

    A re-run writes a new record rather than editing the old one, so older successes of the
    same run_id are superseded. New run ids end in the recipe hash; the recipe is part of
    the key too so that old ids (without the hash) of different recipes stay apart. Weights
    are part of the key so that a synthetic-weight smoke run never shadows the real
    (pretrained) result of the same run_id.

    Args:
        df: Frame from :func:`load_records`.

    Returns:
        Success rows only, one per (run_id, recipe_hash, weights); records without
        ``created_at`` count as oldest; ties are broken by path so the result is
        deterministic.
    """
    ok = df[df["status"] == SUCCESS]
    ok = ok.sort_values(["created_at", "path"], na_position="first", kind="stable")
    return ok.drop_duplicates(["run_id", "recipe_hash", "weights"], keep="last").sort_index()


def exclude_synthetic(df: pd.DataFrame) -> pd.DataFrame:
    """Drops runs on synthetic (random) weights: they measure cost, never quality."""
    return df[df["weights"] != SYNTHETIC].copy()


def quality_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The runs that quality tables and plots may use: latest success, real weights only.

    Args:
        df: Frame from :func:`load_records`, possibly filtered with :func:`select`.

    Returns:
        One row per run_id (and recipe), ``method_label`` telling apart the recipes of one
        (task, model, method) among these runs (:func:`recipe_labels`).
    """
    runs = latest_success(exclude_synthetic(df))
    return runs.assign(method_label=recipe_labels(runs))
