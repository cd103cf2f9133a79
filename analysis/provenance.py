"""The reproducibility section: for every reported run, what it takes to re-run it.

Each row is built from the run's record alone: the command (``python run.py`` + the Hydra
overrides it was launched with), a hash of its resolved config, the code version, the package
versions, the device, the data fingerprint and split sizes, and the seed. Every record is
scrubbed of secrets before anything is read from it.
"""

from __future__ import annotations

import hashlib
import html
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from peftbench.records.redact import scrub

ENTRY = "python run.py"
# Package versions shown per run, in this order (others in env are not shown).
PACKAGES = ("python", "torch", "transformers", "peft")
NOT_RECORDED = "not recorded"


@dataclass(frozen=True)
class ReproRow:
    """What one run's record says about how to reproduce it (all fields are display text)."""

    run_id: str
    seed: str
    command: str  # NOT_RECORDED when the record has no overrides (run outside run.py)
    config_sha256: str
    git: str  # "<sha>" or "<sha> (dirty)"
    packages: str
    device: str
    data: str  # "fingerprint <f>; train 3200 / dev 400 / test 400"


def config_hash(config: Any) -> str:
    """SHA-256 of the canonical JSON of a config (sorted keys, no whitespace, UTF-8).

    Args:
        config: The record's resolved ``config``.

    Returns:
        The hex digest; equal configs give equal hashes whatever their key order.
    """
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def rerun_command(record: dict) -> str | None:
    """The shell command that re-runs a record's cell, or None if its overrides are unknown.

    Args:
        record: A run record (``experiment.overrides`` is Hydra's override list of the job;
            a multirun job records its own values, e.g. ``method=lora seed=1``).

    Returns:
        ``python run.py <overrides>``, each override shell-quoted.
    """
    overrides = (record.get("experiment") or {}).get("overrides")
    if overrides is None:
        return None
    return " ".join([ENTRY, *(shlex.quote(str(o)) for o in overrides)])


def repro_row(record: dict) -> ReproRow:
    """Builds the reproducibility row of one record (scrubbed first).

    Args:
        record: A run record as written by ``peftbench.records.store.write_record``.

    Returns:
        The row; fields the record lacks read ``not recorded``.
    """
    record = scrub(record)
    code, env, data = (record.get(k) or {} for k in ("code", "env", "data"))
    sha = code.get("git_sha") or NOT_RECORDED
    dirty = {True: " (dirty)", False: "", None: " (dirty: unknown)"}[code.get("git_dirty")]
    if code.get("dirty_paths"):  # recorded since 2026-12-06: which files differed
        named, total = code["dirty_paths"][:2], code.get("dirty_files", 0)
        more = f" +{total - len(named)} more" if total > len(named) else ""
        dirty = f" (dirty: {', '.join(named)}{more})"
    packages = ", ".join(f"{p} {env[p]}" for p in PACKAGES if env.get(p))
    sizes = " / ".join(f"{split} {n}" for split, n in (data.get("n") or {}).items())
    return ReproRow(
        run_id=str(record.get("run_id")),
        seed=str((record.get("experiment") or {}).get("seed", NOT_RECORDED)),
        command=rerun_command(record) or NOT_RECORDED,
        config_sha256=config_hash(record["config"]) if "config" in record else NOT_RECORDED,
        git=sha + dirty,
        packages=packages or NOT_RECORDED,
        device=_device(env),
        data=f"fingerprint {data.get('fingerprint') or NOT_RECORDED}; "
        + (sizes or f"sizes {NOT_RECORDED}"),
    )


def _device(env: dict) -> str:
    """The GPU's name, else ``cpu`` with the CPU's family and model and the VM's kernel build
    where recorded (a VM's host changed its pace between days with both CPU names alike)."""
    if env.get("gpu") or not env.get("device"):
        return str(env.get("gpu") or env.get("device") or NOT_RECORDED)
    cpu = env.get("cpu")
    if not cpu:
        return str(env["device"])
    return (f"{env['device']} ({cpu['name']}, family {cpu['family']} model {cpu['model']}; "
            f"{env.get('platform', NOT_RECORDED)})")  # fmt: skip


def repro_rows(runs: pd.DataFrame) -> list[ReproRow]:
    """Reproducibility rows of the reported runs, sorted by run_id.

    Args:
        runs: Quality runs (``records.quality_runs``); their records are read from ``path``.

    Returns:
        One row per run.
    """
    rows = [repro_row(json.loads(Path(p).read_text(encoding="utf-8"))) for p in runs["path"]]
    return sorted(rows, key=lambda r: r.run_id)


_INTRO = (
    "Every run in the table, with what it takes to re-run it: the command (from the repository "
    "root; `peftbench reproduce RUN_ID` re-runs it and compares the metrics), the SHA-256 of "
    "its resolved config (canonical JSON), the code version, package versions, device, data "
    "fingerprint and split sizes. Runs launched outside `run.py` have no recorded command."
)


def to_markdown(rows: list[ReproRow]) -> str:
    """Formats the rows as a Markdown section (a heading, a note and one table).

    Args:
        rows: Output of :func:`repro_rows`.

    Returns:
        Markdown text.
    """
    lines = [
        "## Reproducibility",
        "",
        _INTRO,
        "",
        "| run | seed | command | config sha256 | git | packages | device | data |",
        "|:--|--:|:--|:--|:--|:--|:--|:--|",
    ]
    for r in rows:
        cells = [r.run_id, r.seed, _code(r.command), _code(r.config_sha256), _code(r.git),
                 r.packages, r.device, r.data]  # fmt: skip
        lines.append("| " + " | ".join(c.replace("|", r"\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _code(text: str) -> str:
    return text if text == NOT_RECORDED else f"`{text}`"


def to_html(rows: list[ReproRow]) -> str:
    """Formats the rows as an HTML section (``<section id="reproducibility">``).

    Args:
        rows: Output of :func:`repro_rows`.

    Returns:
        An HTML fragment; every value is escaped. The full config hash is in the cell's
        title, the first 12 digits are shown.
    """
    e = html.escape
    body = "\n".join(
        f"<tr><td>{e(r.run_id)}</td><td>{e(r.seed)}</td><td><code>{e(r.command)}</code></td>"
        f'<td><code title="{e(r.config_sha256)}">{e(r.config_sha256[:12])}</code></td>'
        f"<td><code>{e(r.git)}</code></td><td>{e(r.packages)}</td><td>{e(r.device)}</td>"
        f"<td>{e(r.data)}</td></tr>"
        for r in rows
    )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("Run", "Seed", "Command", "Config sha256", "Git", "Packages", "Device", "Data")
    )
    intro = e(_INTRO).replace("`", "")
    return (
        f'<section id="reproducibility">\n<h2>Reproducibility</h2>\n<p>{intro}</p>\n'
        f'<table class="repro">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n'
        "</table>\n</section>"
    )
