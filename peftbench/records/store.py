"""Run records: one JSON file per run, written atomically, never edited.

Records are the source of truth; wandb, tables, plots and reports are views built from them.
Their schema (and its version) is ``peftbench/records/schema.py``.
A record's file name is ``<run_id>__<UTC timestamp>__<status>.json`` under ``<results>/records``,
so a failed attempt and a later success of the same run both stay on disk.
"""

from __future__ import annotations

import io
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

from peftbench.records.predictions import SUFFIX, PredictionsError, sha256, to_parquet
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


def write_record(record: dict, results_dir: Path, predictions: Any = None) -> Path:
    """Writes the record atomically: a temp file in the same folder, then a hard link.

    Linking (unlike a rename) never replaces an existing file, so two writers that pick the
    same name (same run, same microsecond) cannot overwrite each other: the later one takes the
    next timestamp. Temp files of writers killed mid-write (SIGKILL) are removed on the way.

    ``predictions`` (a DataFrame, ``peftbench/records/predictions.py``) is written first, as
    ``<record file stem>.predictions.parquet``, and the record names it with its sha256 and
    example counts (``predictions`` section): the record appears only once its predictions
    file is whole, so a reader never sees a record whose file is missing or half-written.
    """
    folder = records_dir(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)
    staged, section = _stage_predictions(folder, predictions)
    try:
        while True:
            stem = f"{record['run_id']}__{_stamp()}__{record['status']}"
            table = folder / f"{stem}{SUFFIX}"
            if staged is not None:
                record["predictions"] = {"file": table.name, **section}
                if not _link(staged, table):
                    continue  # another writer took this name: next microsecond
            path = folder / f"{stem}.json"
            tmp = _temp_file(folder, ".json", lambda f: _dump(record, f))
            try:
                if _link(tmp, path):
                    return path
            finally:
                tmp.unlink(missing_ok=True)
            if staged is not None:
                table.unlink(missing_ok=True)  # the record's name was taken: both move on
    finally:
        if staged is not None:
            staged.unlink(missing_ok=True)


def _dump(record: dict, f: Any) -> None:
    json.dump(scrub(record), f, indent=1, default=_jsonable)  # no secrets on disk


def _stage_predictions(folder: Path, predictions: Any) -> tuple[Path | None, dict]:
    """The predictions table written to a temp file, and its sha256 and counts per split."""
    if predictions is None:
        return None, {}
    data, counts = to_parquet(predictions)
    staged = _temp_file(folder, SUFFIX, lambda f: f.write(data), binary=True)
    return staged, {"sha256": sha256(data), "n": counts}


def _temp_file(folder: Path, suffix: str, write: Any, *, binary: bool = False) -> Path:
    """A temp file of this writer (named so a dead writer's can be removed), synced."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(), suffix=suffix)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from the group
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def _link(tmp: Path, path: Path) -> bool:
    """Puts ``tmp`` at ``path`` unless that name is taken (False)."""
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: rename, if the name is free
        if path.exists():
            return False
        os.replace(tmp, path)
        return True


def load_predictions(record_path: Path, record: Any) -> Any:
    """The per-example predictions a record names, checked against its sha256.

    Args:
        record_path: The record's JSON file (the predictions file lies beside it).
        record: The record: its JSON dict, or a ``schema.Record``.

    Returns:
        A DataFrame (columns ``split, example_id, gold, pred, prob``), or None when the
        record has no predictions (written before they existed, or a synthetic task).

    Raises:
        PredictionsError: (a ValueError) the file is missing or its sha256 differs from the
            record's: it is not the file the run wrote, and pairing on it would mislead.
    """
    import pandas as pd

    section = record.get("predictions") if isinstance(record, dict) else record.predictions
    if not section:
        return None
    path = Path(record_path).parent / str(section["file"])
    if not path.is_file():
        raise PredictionsError(
            f"{path}: predictions file missing (named by {Path(record_path).name}); restore it "
            "beside the record or re-run the run"
        )
    data = path.read_bytes()
    actual, expected = sha256(data), str(section.get("sha256"))
    if actual != expected:
        raise PredictionsError(
            f"{path}: sha256 {actual[:16]} differs from the record's {expected[:16]}: not the "
            "file the run wrote; restore it or re-run the run"
        )
    return pd.read_parquet(io.BytesIO(data))


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
