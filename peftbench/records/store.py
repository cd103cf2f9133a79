"""Run records: one JSON file per run, written atomically, never edited.

Records are the source of truth; wandb, tables, plots and reports are views built from them.
Their schema (and its version) is ``peftbench/records/schema.py``.
A record's file name is ``<run_id>__<UTC timestamp>__<status>.json`` under ``<results>/records``,
so a failed attempt and a later success of the same run both stay on disk.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import math
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from peftbench.records.predictions import SUFFIX, PredictionsError, sha256, to_parquet
from peftbench.records.redact import scrub
from peftbench.records.schema import Record, SchemaError

log = logging.getLogger("peftbench")

RECORDS_DIR = "records"


def records_dir(results_dir: Path) -> Path:
    return Path(results_dir) / RECORDS_DIR


def recipe_siblings(results_dir: Path, run_id: str) -> Iterator[dict]:
    """The success records of the other seeds of ``run_id``'s recipe (same task, model,
    method and recipe hash), oldest first; files that do not read as JSON are passed over."""
    stem, _, hash_ = run_id.rpartition("--")
    cell = stem.rpartition("--s")[0]
    for path in sorted(records_dir(results_dir).glob(f"{cell}--s*--{hash_}__*__success.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("run_id") != run_id:
            yield record


def find_success(results_dir: Path, run_id: str, *, set_aside_bad: bool = True) -> Path | None:
    """Returns the newest success record of ``run_id`` that reads as the schema (skip-if-done).

    A ``__success.json`` file that does not (damaged JSON, a list, an unknown schema version,
    impossible values) never counts as done: it is renamed ``<name>.rejected`` (kept, but no
    longer a record to the sweep or the report), said in one line, and the run goes again.
    A reader that must not change the results folder (``reproduce``) passes
    ``set_aside_bad=False``: such a file is then only passed over.
    """
    for path in sorted(records_dir(results_dir).glob(f"{run_id}__*__success.json"), reverse=True):
        record, reason = read_record(path)
        if record is not None and record.status == "success":
            return path
        reason = reason or f"status {record.status!r} in a success file"
        if not set_aside_bad:
            continue
        aside = set_aside(path)
        log.warning(
            "%s is not a valid record (%s): it does not count as done; set aside as %s",
            path,
            reason,
            aside.name,
        )
    return None


def set_aside(path: Path) -> Path:
    """Renames a damaged file ``<name>.rejected`` (never deleted: a person may want it)."""
    aside = path.with_name(path.name + ".rejected")
    try:
        os.replace(path, aside)
    except OSError:  # read-only results: it still does not count; nothing else to do
        return path
    return aside


def read_record(path: Path) -> tuple[Record | None, str | None]:
    """``(record, None)``, or ``(None, why the file is not a usable record)``.

    The one test of "a record" for both the sweep (skip-if-done) and the report: parses as
    the schema (:meth:`Record.from_json`), names its run, and a success holds possible
    values only (:func:`impossible_values`).
    """
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return None, f"unreadable JSON ({err})"
    try:
        # A newer schema may change meanings; guessing would quietly mix incomparable runs.
        record = Record.from_json(value)
    except (SchemaError, TypeError) as err:
        return None, str(err)
    exp = record.experiment
    missing = [k for k in ("task", "model", "method") if not getattr(exp, k)]
    missing += [k for k in ("run_id", "status") if not getattr(record, k)]
    if missing:
        return None, f"missing {', '.join(missing)}"
    problem = impossible_values(record) if record.status == "success" else None
    return (None, problem) if problem else (record, None)


#: Cost fields that are counts, sizes or durations: finite and >= 0 (dotted under ``cost``).
NON_NEGATIVE_COSTS = (
    "setup_time_s", "train_time_s", "eval_time_s", "tokens_per_s", "samples_per_s",
    "peak_mem_bytes.allocated", "peak_mem_bytes.rss", "energy.joules", "energy.joules_per_token",
)  # fmt: skip
NON_NEGATIVE_PARAMS = (
    "base", "total", "trainable", "trainable_pct", "head", "artifact_bytes", "stored", "stored_pct",
)  # fmt: skip


def impossible_values(record: Record) -> str | None:
    """What a success record holds that no run can produce, or None.

    Every metric a run scored lies between its metric's worst and best values
    (``tasks/metrics.py``: accuracy in [0, 1], mcc in [-1, 1], BLEU in [0, 100]); a metric
    this code does not know must still be a finite number. Costs and parameter counts are
    finite and never negative. Checked when records are read, so a hand-edited or damaged
    record can neither be bolded best in a table nor count as done.
    """
    primary = record.primary
    if primary is None or not _is_number(primary.value):
        return "success record without a finite metrics.primary.value"
    scores = {f"primary {primary.name}": (primary.name, primary.value)}
    for split in ("dev", "test"):
        section = getattr(record.metrics, split) or {}
        if not isinstance(section, dict):
            return f"metrics.{split} is not an object"
        scores.update({f"{split} {k}": (k, v) for k, v in section.items()})
    for where, (name, value) in scores.items():
        problem = _metric_problem(name, value)
        if problem:
            return f"{where} = {value!r} {problem}"
    for key in NON_NEGATIVE_COSTS:
        value = _dig(record.cost, key)
        if value is not None and not (_is_number(value) and value >= 0):
            return f"cost.{key} = {value!r} is not a finite number >= 0"
    for key in NON_NEGATIVE_PARAMS:
        value = getattr(record.params, key, None) if record.params else None
        if value is not None and not (_is_number(value) and value >= 0):
            return f"params.{key} = {value!r} is not a finite number >= 0"
    return None


def _metric_problem(name: str, value: Any) -> str | None:
    if not _is_number(value):
        return "is not a finite number"
    try:
        from tasks.metrics import METRICS  # lazy: scikit-learn
    except ImportError:  # the package's own tasks are not importable: ranges unknown
        return None
    metric = METRICS.get(name)
    if metric is None:
        return None
    low, high = sorted((metric.worst, metric.best))
    return None if low <= value <= high else f"is outside {name}'s range [{low:g}, {high:g}]"


def _is_number(value: Any) -> bool:
    is_real = isinstance(value, int | float) and not isinstance(value, bool)
    return is_real and math.isfinite(value)


def _dig(section: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(section, dict):
            return None
        section = section.get(key)
    return section


def write_record(
    record: dict, results_dir: Path, predictions: Any = None, *, folder: Path | None = None
) -> Path:
    """Writes the record atomically: a temp file in the same folder, then a hard link.

    Linking (unlike a rename) never replaces an existing file, so two writers that pick the
    same name (same run, same microsecond) cannot overwrite each other: the later one takes the
    next timestamp. Temp files of writers killed mid-write (SIGKILL) are removed on the way.

    ``predictions`` (a DataFrame, ``peftbench/records/predictions.py``) is written first, as
    ``<record file stem>.predictions.parquet``, and the record names it with its sha256 and
    example counts (``predictions`` section): the record appears only once its predictions
    file is whole, so a reader never sees a record whose file is missing or half-written.
    """
    folder = records_dir(results_dir) if folder is None else Path(folder)
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


#: Where a record goes when ``<results>/records`` cannot take it (full disk, a folder that
#: became a file, lost permissions): the finished run is kept, and the line says where.
FALLBACK_ENV = "PEFTBENCH_FALLBACK_DIR"


def fallback_dirs() -> list[Path]:
    """Folders tried in order when the records folder refuses a record."""
    folders = [Path(os.environ[FALLBACK_ENV])] if os.environ.get(FALLBACK_ENV) else []
    folders.append(Path.home() / ".cache" / "peftbench" / "unsaved-records")
    folders.append(Path(tempfile.gettempdir()) / "peftbench-unsaved-records")
    return folders


def save_record(
    record: dict, results_dir: Path, predictions: Any = None
) -> tuple[Path | None, str | None]:
    """Writes the record; if the records folder refuses it, into a fallback folder.

    A run that finished must not be lost because its last write failed: the record then goes
    to the first of :func:`fallback_dirs` that takes it.

    Returns:
        ``(path, None)`` when written under ``<results>/records``; ``(fallback path or None,
        why the records folder refused)`` otherwise (None: no folder took it).
    """
    try:
        return write_record(record, results_dir, predictions), None
    except OSError as error:
        why = f"{type(error).__name__}: {error.strerror or error}"
    for folder in fallback_dirs():
        try:
            return write_record(record, folder, predictions, folder=folder), why
        except OSError:
            continue
    return None, why


def keep_record(record: dict, results_dir: Path, predictions: Any = None) -> Path | None:
    """:func:`save_record`, saying in one line on stderr where the record went if not home.

    Returns:
        The record's path (under a fallback folder when the records folder refused it), or
        None when no folder took it.
    """
    path, why = save_record(record, results_dir, predictions)
    if why is None:
        return path
    home = records_dir(results_dir)
    primary = (record.get("metrics") or {}).get("primary") or {}
    if path is not None:
        where = f"kept at {path}; move it into {home}/ once that is fixed"
    else:
        where = (
            f"no fallback folder took it either ({', '.join(map(str, fallback_dirs()))}); "
            f"its {record['status']} result was {primary.get('name')}={primary.get('value')}"
        )
    print(
        f"peftbench: error: {record['run_id']}: the {record['status']} record could not be "
        f"written to {home} ({why}); {where}",
        file=sys.stderr,
        flush=True,
    )
    return path


def is_saved(path: Path | None, results_dir: Path) -> bool:
    """Whether a record path is in ``<results>/records`` (not a fallback folder, not lost)."""
    return path is not None and path.parent == records_dir(results_dir)


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
        ours = match is not None and match["host"] == socket.gethostname()
        if not ours or process_alive(int(match["pid"])):
            continue  # another host's writer, or a live one: not ours to judge
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process of this id exists on this host (another user's counts)."""
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


#: The modified files a record names at most (a benchmark's own stages modify hundreds).
DIRTY_PATHS_MAX = 20


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
    info = {
        "git_sha": git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "peftbench_version": __version__,
    }
    if status:  # which files: a write-up edited beside a run is not a code change
        paths = sorted((git("diff", "--name-only", "HEAD") or "").splitlines())
        info |= {"dirty_files": len(paths), "dirty_paths": paths[:DIRTY_PATHS_MAX]}
    return info


def env_info(device: Any) -> dict:
    """Versions and hardware that can move a result."""
    import peft
    import torch
    import transformers

    from peftbench.measure.peak import cpu_identity

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
    else:  # which host generation ran it: a VM's CPU name alone may not say
        info["cpu"] = cpu_identity()
    return info


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- one run at a time

LOCKS_DIR = "locks"
_HELD: dict[str, Any] = {}  # lock path -> open file: this process's claims (re-entrant)


@contextmanager
def claim_run(results_dir: Path, run_id: str, *, enabled: bool = True) -> Iterator[str | None]:
    """Holds ``<results>/locks/<run_id>.lock`` while a run of this id trains in this process.

    Two processes started with the same run (two terminals, two identical sweeps sharing the
    work) would otherwise both train it, the second resuming from the first's live
    checkpoint. ``flock`` is released by the kernel when its holder dies, even by SIGKILL, so
    no stale lock outlives a crash; the file itself stays (removing it would race).

    Yields:
        None when this process holds the claim (or ``enabled`` is false: a data-parallel
        rank other than 0), else who holds it (``host pid N``): the caller skips the run.
    """
    if not enabled:
        yield None
        return
    path = Path(results_dir) / LOCKS_DIR / f"{run_id}.lock"
    if str(path) in _HELD:  # this process already holds it (a sweep listing a run twice)
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 (held open for the lock's lifetime)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        yield holder
        return
    handle.seek(0)
    handle.truncate()
    handle.write(f"{socket.gethostname()} pid {os.getpid()}")
    handle.flush()
    _HELD[str(path)] = handle
    try:
        yield None
    finally:
        _HELD.pop(str(path), None)
        handle.close()  # closing the file releases the lock
