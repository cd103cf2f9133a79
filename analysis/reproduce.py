"""Re-runs one recorded cell from its record and compares the metrics with the recorded ones.

The config is composed again with Hydra's compose API from the repository's ``conf/`` and the
record's overrides, so a reproduction also catches changes to the config files. On CPU with
the same seed a faithful re-run gives bitwise-identical metrics; anything else is reported
metric by metric.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftbench.config.paths import CONF_DIR
from peftbench.records.store import find_success

# Keys that locate or label a run but cannot change its numbers: the reproduction sets its own.
RUN_LOCAL = ("results_dir", "force", "sweep_id", "tracker")


class ReproduceError(Exception):
    """The run cannot be reproduced from what was recorded (no record, no overrides)."""


@dataclass(frozen=True)
class MetricDiff:
    """One metric of the recorded run next to its reproduction."""

    name: str
    recorded: Any
    reproduced: Any

    @property
    def identical(self) -> bool:
        return self.recorded == self.reproduced


@dataclass(frozen=True)
class Reproduction:
    """The outcome of re-running a recorded cell."""

    run_id: str
    record_path: Path
    overrides: list[str]
    metrics: list[MetricDiff]
    config_changes: list[str] = field(default_factory=list)  # "key: recorded -> now"
    status: str = "success"  # status of the re-run
    error: str | None = None

    @property
    def identical(self) -> bool:
        """True when the re-run succeeded and every metric is exactly equal."""
        return self.status == "success" and all(m.identical for m in self.metrics)


def load_record(results_dir: Path, run_id: str) -> tuple[Path, dict]:
    """The newest success record of ``run_id`` under ``results_dir/records``.

    Raises:
        ReproduceError: If there is none.
    """
    path = find_success(Path(results_dir), run_id, set_aside_bad=False)  # reads, never moves
    if path is None:
        raise ReproduceError(f"no success record of {run_id!r} in {Path(results_dir) / 'records'}")
    return path, json.loads(path.read_text(encoding="utf-8"))


def reproduce(run_id: str, results_dir: Path) -> Reproduction:
    """Re-runs the newest success record of ``run_id`` in a temporary results folder.

    The reproduction composes ``conf/`` with the record's overrides, minus the run-local keys
    in :data:`RUN_LOCAL`, plus ``results_dir=<temp>``, ``force=true`` and ``tracker=none``
    (tracking is a view: it cannot move the numbers, and it should not add a wandb run).

    Args:
        run_id: The cell, e.g. ``polarity--minilm-l6--lora--s0``.
        results_dir: The results folder holding ``records/``.

    Returns:
        The comparison, including differences between the recorded config and the one
        composed now (a changed default in ``conf/`` shows up there).

    Raises:
        ReproduceError: If there is no success record or it holds no overrides.
    """
    from omegaconf import OmegaConf

    from peftbench.runner.experiment import run

    path, record = load_record(results_dir, run_id)
    overrides = (record.get("experiment") or {}).get("overrides")
    if overrides is None:
        raise ReproduceError(
            f"{path.name} has no experiment.overrides (written by an older peftbench); "
            "re-run it by hand from its config"
        )
    kept = [o for o in overrides if _override_key(o).split(".")[0] not in RUN_LOCAL]
    with tempfile.TemporaryDirectory(prefix="peftbench-reproduce-") as tmp:
        cfg = compose([*kept, f"results_dir={tmp}", "force=true", "tracker=none"])
        changes = config_changes(
            record.get("config") or {}, OmegaConf.to_container(cfg, resolve=True)
        )
        summary = run(cfg)
        again = json.loads(Path(summary["path"]).read_text(encoding="utf-8"))
    return Reproduction(
        run_id=run_id,
        record_path=path,
        overrides=kept,
        metrics=compare_metrics(record.get("metrics") or {}, again.get("metrics") or {}),
        config_changes=changes,
        status=again["status"],
        error=again.get("error"),
    )


def compose(overrides: list[str]) -> Any:
    """Composes the repository's config with ``overrides`` (Hydra's compose API)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def _override_key(override: str) -> str:
    """``+a.b=1`` -> ``a.b``; ``~x`` -> ``x``; ``model=t`` -> ``model``."""
    return override.split("=", 1)[0].lstrip("+~")


def config_changes(recorded: dict, now: dict) -> list[str]:
    """Leaf-by-leaf differences between two resolved configs, ignoring :data:`RUN_LOCAL`.

    Args:
        recorded: The record's ``config``.
        now: The config composed for the reproduction.

    Returns:
        ``"<dotted key>: <recorded> -> <now>"`` per differing leaf, sorted; a key present on
        one side only shows ``<absent>`` on the other.
    """
    a, b = _leaves(recorded), _leaves(now)
    changes = []
    for key in sorted(set(a) | set(b)):
        if key.split(".")[0] in RUN_LOCAL or a.get(key, _ABSENT) == b.get(key, _ABSENT):
            continue
        changes.append(f"{key}: {a.get(key, _ABSENT)!r} -> {b.get(key, _ABSENT)!r}")
    return changes


_ABSENT = "<absent>"


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def compare_metrics(recorded: dict, reproduced: dict) -> list[MetricDiff]:
    """Pairs every metric of the two records: primary value, selected step, dev/*, test/*.

    Args:
        recorded: ``metrics`` of the original record.
        reproduced: ``metrics`` of the re-run (empty if it failed).

    Returns:
        One entry per metric present on either side, in a stable order; a missing value is
        None (and so never equal to a recorded number).
    """

    def flat(metrics: dict) -> dict[str, Any]:
        out = {
            "primary": (metrics.get("primary") or {}).get("value"),
            "selected_step": metrics.get("selected_step"),
        }
        for split in ("dev", "test"):
            out |= {f"{split}/{k}": v for k, v in (metrics.get(split) or {}).items()}
        return out

    a, b = flat(recorded), flat(reproduced)
    names = list(a) + [k for k in b if k not in a]
    return [MetricDiff(n, a.get(n), b.get(n)) for n in names]


def format_report(result: Reproduction) -> str:
    """Human-readable lines for the command line: config changes, metrics, verdict."""
    lines = [f"record: {result.record_path}"]
    lines += [f"config changed since the run: {c}" for c in result.config_changes]
    if result.status != "success":
        lines.append(f"re-run {result.status}: {result.error}")
    for m in result.metrics:
        if m.identical:
            lines.append(f"  {m.name:<24} {m.recorded!r} (identical)")
        else:
            lines.append(f"  {m.name:<24} recorded {m.recorded!r} != reproduced {m.reproduced!r}"
                         f"{_delta(m)}")  # fmt: skip
    verdict = "IDENTICAL" if result.identical else "DIFFERENT"
    lines.append(f"{result.run_id}: {verdict}")
    return "\n".join(lines)


def _delta(m: MetricDiff) -> str:
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool)
                  for v in (m.recorded, m.reproduced))  # fmt: skip
    if not numbers or not all(math.isfinite(v) for v in (m.recorded, m.reproduced)):
        return ""
    return f" (diff {m.reproduced - m.recorded:+.6g})"
