"""The run record's schema: the writer (``experiment``) builds it, ``analysis`` reads it.

A record is JSON on disk (``peftbench/records/store.py`` writes it atomically); this module is the
one definition of the sections everything downstream depends on: what the run is
(:class:`Experiment`), what it trains (:class:`Params`) and what it scored
(:class:`Metrics`). The writer constructs these classes, so a key cannot be misspelt on one
side only; the reader parses with :meth:`Record.from_json`, which reads schema 1 and 2.

The measurement sections (``cost``, ``forgetting``, ``data``, ``env``, ``history``) stay
mappings: their keys come from the instruments that measure them (``measure/instrument.py``,
``measure/forgetting.py``), are documented there and in docs/RECORDS.md, and grow with them.
Pure stdlib: the light pre-check and the reports import it without torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: 2: the run id ends with the recipe hash; ``experiment`` holds ``recipe`` and ``recipe_hash``.
SCHEMA_VERSION = 2
#: Versions :meth:`Record.from_json` reads: 1 (run ids without the recipe hash) reads as it was.
READABLE_SCHEMAS = (1, SCHEMA_VERSION)


class SchemaError(ValueError):
    """A JSON object that is not a record this version can read (the message says why)."""


def _parse(cls: type, value: Any, where: str) -> Any:
    """A dataclass from a JSON object: known keys only, missing optional ones at defaults.

    Raises:
        SchemaError: ``value`` is not an object, or lacks a required field (named).
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise SchemaError(f"{where}: expected an object, got {type(value).__name__}")
    fields = dataclasses.fields(cls)
    required = [
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    absent = [name for name in required if name not in value]
    if absent:
        raise SchemaError(f"{where} lacks {', '.join(absent)}")
    names = {f.name for f in fields}
    return cls(**{k: v for k, v in value.items() if k in names})


@dataclass(frozen=True)
class Experiment:
    """What the run is: its names, seed and recipe (``experiment`` section)."""

    task: str
    model: str
    method: str
    seed: int | None = None
    task_version: int | None = None
    method_version: int | None = None  # bumped where a method's scores can move
    budget_pct: float | None = None
    lr: float | None = None  # what the optimizer got: method.lr * method.lr_scale
    weights: str | None = None  # "pretrained", or "synthetic" (kept out of quality tables)
    sweep_id: str | None = None
    overrides: list[str] | None = None
    recipe_hash: str | None = None  # schema 2; None in schema 1
    recipe: dict[str, Any] | None = (
        None  # the values the hash covers (peftbench/config/identity.py)
    )


@dataclass(frozen=True)
class Params:
    """What the run trains (``params`` section), counted by ``methods.base.count_params``."""

    base: int  # the backbone as loaded, task head included
    total: int  # after the method was applied
    trainable: int  # method + head
    trainable_pct: float  # 100 * trainable / base
    head: int
    head_modules: list[str] = field(default_factory=list)
    artifact_bytes: int | None = None  # the saved trainable state
    # What the trained delta keeps after training (method + head): ``trainable`` with a
    # prompt reparametrisation (prefix MLP, P-tuning's encoder) counted as the prompt it
    # produces (methods.base.prompt_reparametrisation); None in records before it existed.
    stored: int | None = None
    stored_pct: float | None = None  # 100 * stored / base
    budget: dict[str, Any] | None = None  # method.budget_pct: requested, reached, knob, value
    # fisher_mask: share of the masked entries per embeddings / layer.<i> / pooler / head
    mask_by_module: dict[str, float] | None = None


@dataclass(frozen=True)
class Primary:
    """The one number a table shows for the run."""

    name: str
    split: str
    value: float | None
    higher_is_better: bool


@dataclass(frozen=True)
class Metrics:
    """What the run scored (``metrics`` section): test once, at the dev-selected step."""

    primary: Primary | None = None
    dev: dict[str, float] | None = None  # at the selected step: what tuning ranks
    test: dict[str, float] | None = None
    selected_step: int | None = None
    implementation: dict[str, str] | None = None  # per metric: builtin or the evaluate id

    @classmethod
    def from_json(cls, value: Any) -> Metrics | None:
        metrics = _parse(cls, value, "metrics")
        if metrics is None:
            return None
        return dataclasses.replace(
            metrics, primary=_parse(Primary, metrics.primary, "metrics.primary")
        )


@dataclass(frozen=True)
class Record:
    """One run's record as the reports read it (the JSON may hold more: see the module doc)."""

    run_id: str
    status: str
    experiment: Experiment
    schema_version: int = SCHEMA_VERSION
    error: str | None = None
    created_at: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    code: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    params: Params | None = None  # None: the run failed before counting
    cost: dict[str, Any] | None = None
    forgetting: dict[str, Any] | None = None
    metrics: Metrics | None = None
    # issue 33, absent from older records: the per-example predictions file beside the
    # record ({"file", "sha256", "n": {"dev", "test"}}; records/store.load_predictions reads
    # it), and whether the run collapsed to a constant prediction (measure/quality.py)
    predictions: dict[str, Any] | None = None
    quality: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, value: Any) -> Record:
        """Parses a record of a readable schema version.

        Raises:
            SchemaError: not a JSON object with ``schema_version``, ``run_id``, ``status``
                and ``experiment`` (task, model, method), or a version this code cannot read.
        """
        if not isinstance(value, dict) or not {"run_id", "status", "experiment"} <= set(value):
            raise SchemaError("not a run record (no run_id, status and experiment)")
        version = value.get("schema_version")
        if version not in READABLE_SCHEMAS:
            raise SchemaError(f"schema_version {version!r} (this code reads {READABLE_SCHEMAS})")
        sections = {
            "experiment": _parse(Experiment, value["experiment"], "experiment"),
            "params": _parse(Params, value.get("params"), "params"),
            "metrics": Metrics.from_json(value.get("metrics")),
        }
        return _parse(cls, {**value, **sections}, "record")

    @property
    def primary(self) -> Primary | None:
        return self.metrics.primary if self.metrics else None

    @property
    def wall_s(self) -> float | None:
        """The run's whole wall time. A resumed run's ``cost.wall_s`` counted only its last
        process until 2026-12-07, while its ``wall_parts_s`` held the whole loop: the larger
        of the two (process start-up, before the run, counts in neither)."""
        cost = self.cost or {}
        parts = cost.get("wall_parts_s") or {}
        timed = sum(v for k, v in parts.items() if k != "startup_s" and v is not None)
        wall = cost.get("wall_s")
        return max(wall, timed) if wall is not None else None


def to_json(section: Any) -> dict[str, Any]:
    """A section for the record file (nested dataclasses become objects)."""
    return dataclasses.asdict(section)
