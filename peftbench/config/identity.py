"""A run's identity is its recipe: every resolved config value that can change its result.

``run_id = <task>--<model>--<method>--s<seed>--<recipe hash>``. The hash covers the whole
resolved config except the keys in :data:`NOT_IN_RECIPE` (where results go, how they are
logged or tracked, how the work is spread over processes), plus :data:`HARNESS_VERSION`.
Two runs with one id were trained the same way, so skip-if-done, checkpoint resume and the
report's seed aggregation may treat them as one; a run that differs in any value that can
move its score (a learning rate, a rank, a step count, a data file...) gets another id.

This is the one place the in/out lists live (docs/IDENTITY.md quotes them); adding a
config key puts it *in* the recipe unless it is listed here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

#: Bumped when the harness changes how a result is produced (the loop, the split, a metric's
#: implementation...), so records of older code are never reused as done.
HARNESS_VERSION = 2

#: Config keys (dotted prefixes) that cannot change a run's result. The seed is part of the
#: id on its own (seeds of one recipe aggregate into one table cell).
NOT_IN_RECIPE: tuple[str, ...] = (
    "seed",
    "results_dir",  # where records go
    "sweep_id",  # which launch a run belongs to
    "force",  # whether to re-run
    "tracker",  # wandb or nothing
    "data_cache",  # tokenized splits read from disk or computed: the same encodings
    "memory_guard",  # whether a run too big for RAM fails as oom or is killed
    "instrument",  # what is measured after training (latency, the MFU peak)
    "hydra",  # launcher, sweeper, output folders
    "train.threads",  # how the cores are shared between parallel runs
    "train.log_every_steps",  # logging cadence
    "train.num_workers",  # collate in background processes: the same batches
    "train.checkpoint_every_steps",  # a resumed run ends as an uninterrupted one
    "train.keep_checkpoints",
)

#: Keys left out of the recipe while they hold a value that means "this feature is off", so
#: that its spellings (null, 1.0, unset) hash alike and a run without the feature has the id
#: it had before the key existed. Any other value is in the recipe like every key.
#: ``model.attn_implementation`` null is the library's default kernel, as every run had
#: before the key, and ``model.padding_side`` null the tokenizer's own side;
#: ``task.train_size`` null or 1.0 is the whole train split; ``task.metric_impl`` builtin is
#: peftbench's own metrics, and then ``task.evaluate`` (which Hub metric to use otherwise)
#: cannot change a score. ``train.evaluate_test`` true is the run as it always was; false (a
#: tuning stage's sealed test) is another record, so another id: a final run of the same seed
#: is never skipped as done by a grid run that has no test score.
AS_BEFORE: dict[str, tuple[Any, ...]] = {
    "model.attn_implementation": (None,),
    "model.padding_side": (None,),
    "task.train_size": (None, 1.0),
    "task.metric_impl": (None, "builtin"),
    "train.evaluate_test": (None, True),
}

HASH_CHARS = 8


def _out(key: str) -> bool:
    return any(key == name or key.startswith(name + ".") for name in NOT_IN_RECIPE)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat if flat or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: _normal(tree)}


def _normal(value: Any) -> Any:
    """One spelling per value: ``2.0`` and ``2`` are one number, tuples are lists."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list | tuple):
        return [_normal(v) for v in value]
    return value


def device_kind(device: str) -> str:
    """``cuda:1`` -> ``cuda``: which GPU of a node ran it cannot change the result."""
    return str(device).split(":", 1)[0]


#: What ``train.precision=auto`` trained in on each device kind before it could pick bf16 on a
#: CPU with native bf16 (issue 35): where it still resolves so, the recipe keeps ``auto`` and
#: the run keeps the id it always had; where it resolves otherwise, the recipe holds the
#: resolved precision, so those runs never share an id (or skip-if-done) with fp32 ones.
AUTO_PRECISION_BEFORE = {"cuda": "bf16"}  # every other kind: fp32


def recipe(
    config: Mapping[str, Any], *, device: str | None = None, precision: str | None = None
) -> dict[str, Any]:
    """The flat ``{dotted key: value}`` of every value in the recipe, sorted by key.

    Args:
        config: The resolved config (a plain dict; secret values already redacted, so the
            hash never depends on a credential).
        device: The device the run uses (``auto`` resolved); its kind (cpu, cuda, mps) is
            part of the recipe, its index is not.
        precision: ``train.precision`` as resolved on that device (``runner.device.
            resolve_precision``); it replaces ``auto`` where auto meant otherwise before
            (:data:`AUTO_PRECISION_BEFORE`).
    """
    flat = {k: v for k, v in _flatten(config).items() if not _out(k) and k != "device"}
    for key, values in AS_BEFORE.items():
        value = _raw(config, key)
        if key in flat and any(value is v or (type(value) is type(v) and value == v)
                               for v in values):  # fmt: skip
            del flat[key]  # 1.0 (the whole split) but not 1 (one example)
    if flat.get("task.metric_impl", "builtin") == "builtin":
        flat = {k: v for k, v in flat.items() if not k.startswith("task.evaluate.")}
    flat["device"] = device_kind(device or config.get("device", "auto"))
    before = AUTO_PRECISION_BEFORE.get(flat["device"], "fp32")
    if flat.get("train.precision") == "auto" and precision not in (None, before):
        flat["train.precision"] = precision
    flat["harness_version"] = HARNESS_VERSION
    return dict(sorted(flat.items()))


def _raw(config: Mapping[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def recipe_hash(values: Mapping[str, Any]) -> str:
    """A stable short hash of a recipe (the same on every machine and Python version)."""
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]


def run_id(task: str, model: str, method: str, seed: int, hash_: str) -> str:
    """``<task>--<model>--<method>--s<seed>--<hash>``: readable, and unique per recipe."""
    return f"{task}--{model}--{method}--s{seed}--{hash_}"
