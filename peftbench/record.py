"""Run records: one JSON file per run, written atomically, never edited.

Records are the source of truth; wandb, tables, plots and reports are views built from them.
A record's file name is ``<run_id>__<UTC timestamp>__<status>.json`` under ``<results>/records``,
so a failed attempt and a later success of the same run both stay on disk.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
RECORDS_DIR = "records"


def make_run_id(task: str, model: str, method: str, seed: int, budget_pct: float | None) -> str:
    """``<task>--<model>--<method>[--b<budget>]--s<seed>``: the identity of one cell."""
    budget = f"--b{budget_pct:g}" if budget_pct is not None else ""
    return f"{task}--{model}--{method}{budget}--s{seed}"


def records_dir(results_dir: Path) -> Path:
    return Path(results_dir) / RECORDS_DIR


def find_success(results_dir: Path, run_id: str) -> Path | None:
    """Returns the newest success record of ``run_id``, if any (skip-if-done)."""
    for path in sorted(records_dir(results_dir).glob(f"{run_id}__*__success.json"), reverse=True):
        try:
            if json.loads(path.read_text()).get("status") == "success":
                return path
        except (OSError, json.JSONDecodeError):
            continue  # a damaged file never counts as done
    return None


def write_record(record: dict, results_dir: Path) -> Path:
    """Writes the record atomically: a temp file in the same folder, then a rename."""
    folder = records_dir(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    path = folder / f"{record['run_id']}__{stamp}__{record['status']}.json"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1, default=_jsonable)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def code_info() -> dict:
    """Git SHA and dirty flag of the code that produced the run."""
    from peftbench import __version__

    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10
            )
            return out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_sha": git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "peftbench_version": __version__,
    }


def env_info(device: Any) -> dict:
    """Versions and hardware that can move a result."""
    import peft
    import torch
    import transformers

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if getattr(device, "type", None) == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
