"""Run records: one JSON file per run, written atomically, never edited.

Records are the source of truth; wandb, tables, plots and reports are views built from them.
Their schema (and its version) is ``peftbench/records/schema.py``.
A record's file name is ``<run_id>__<UTC timestamp>__<status>.json`` under ``<results>/records``,
so a failed attempt and a later success of the same run both stay on disk.
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from peftbench.records.redact import scrub

RECORDS_DIR = "records"


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
    """Writes the record atomically: a temp file in the same folder, then a hard link.

    Linking (unlike a rename) never replaces an existing file, so two writers that pick the
    same name (same run, same microsecond) cannot overwrite each other: the later one takes the
    next timestamp. Temp files of writers killed mid-write (SIGKILL) are removed on the way.
    """
    folder = records_dir(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(), suffix=".json")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from the group
        with os.fdopen(fd, "w") as f:
            json.dump(scrub(record), f, indent=1, default=_jsonable)  # no secrets on disk
            f.flush()
            os.fsync(f.fileno())
        return _publish(Path(tmp), folder, record)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _publish(tmp: Path, folder: Path, record: dict) -> Path:
    while True:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        path = folder / f"{record['run_id']}__{stamp}__{record['status']}.json"
        try:
            os.link(tmp, path)
            return path
        except FileExistsError:
            continue  # another writer took this name: next microsecond
        except OSError:  # a file system without hard links: rename, if the name is free
            if path.exists():
                continue
            os.replace(tmp, path)
            return path


def _umask() -> int:
    """The process's umask (Linux reports it; elsewhere read by setting and restoring it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ".tmp-<host>@<pid>@<random>.json": whose temp file it is, so a dead writer's can be removed.
_TEMP_NAME = re.compile(r"^\.tmp-(?P<host>.*)@(?P<pid>\d+)@")


def _temp_prefix() -> str:
    return f".tmp-{socket.gethostname()}@{os.getpid()}@"


def remove_stale_temps(folder: Path) -> list[Path]:
    """Removes temp files left by writers on this host whose process no longer exists.

    Returns:
        The removed paths.
    """
    removed = []
    for path in folder.glob(".tmp-*"):
        match = _TEMP_NAME.match(path.name)
        if match is None or match["host"] != socket.gethostname() or _alive(int(match["pid"])):
            continue  # another host's writer, or a live one: not ours to judge
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def code_info() -> dict:
    """Git SHA and dirty flag of the code that produced the run."""
    from peftbench import __version__
    from peftbench.config.paths import SOURCE_ROOT

    def git(*args: str) -> str | None:
        if SOURCE_ROOT is None:  # an installed wheel: no checkout of its own to name
            return None
        try:
            out = subprocess.run(
                ["git", *args], cwd=SOURCE_ROOT, capture_output=True, text=True, timeout=10
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
