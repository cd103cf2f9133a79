"""A command's runs run the code and configuration it started with, or they do not start.

Hydra's basic launcher runs a sweep's jobs one after another in one process: the Python it
runs is what was imported when the sweep began, but each job composes its config from the
``conf/`` files as they are when it starts, and its record names the git HEAD of that
moment. A commit, a checkout or an edit under a sweep that runs for hours so gives records
whose recipe or code label is not what ran (two records of the offline benchmark v2 had to
be dropped for this). A command that runs (``run.py``, ``peftbench run``) or launches sweeps
(``tune``, ``benchmark``: :mod:`peftbench.launch.commands`) therefore pins a fingerprint of
its source (every ``.py`` and ``.yaml`` file of ``peftbench/``, ``conf/`` and ``tasks/``)
when it starts its first; a run that finds the source changed is not started (no record,
nothing lost) and the command exits 3, naming the files, for the same command to go on with
the new version.

The pin travels in the environment (:data:`ENV`), so the lanes a benchmark stage starts, the
sweeps of ``peftbench tune`` and the jobs a scheduler runs compare against the command that
launched them; the pinned file list waits in the cache (``<cache>/source-pins/``) for them to
name what changed. Records and docs are not in the fingerprint: committing a chunk's records
under a running sweep is expected. Standard library only: the command line imports it
before torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from peftbench.assets import cache_root
from peftbench.config.paths import CONF_DIR, PACKAGE_DIR, SOURCE_ROOT

log = logging.getLogger("peftbench")

#: Holds the digest of the source as the outermost command found it.
ENV = "PEFTBENCH_SOURCE_DIGEST"
#: The files that decide what a run does: code, configuration, task definitions.
SUFFIXES = (".py", ".yaml")
#: Where they live: a checkout's top-level folders, or an installed wheel's packages (whose
#: conf/ lies inside peftbench/).
ROOTS = (PACKAGE_DIR, (SOURCE_ROOT or PACKAGE_DIR.parent) / "tasks") + (
    () if CONF_DIR.is_relative_to(PACKAGE_DIR) else (CONF_DIR,)
)
_refused: list[str] = []  # runs this process refused: the full reason is said for the first


def fingerprint(roots: tuple[Path, ...] | None = None) -> dict[str, str]:
    """Each source file's path (relative to its root's parent) and the hash of its bytes."""
    files = {}
    for root in roots or ROOTS:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.suffix in SUFFIXES and "__pycache__" not in path.parts and path.is_file():
                name = path.relative_to(root.parent).as_posix()
                files[name] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return files


def digest(files: dict[str, str]) -> str:
    """One short hash of a fingerprint: equal exactly when every file is."""
    text = "".join(f"{name}\0{sha}\n" for name, sha in sorted(files.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _kept(pinned: str) -> Path:
    """Where a pin's file list waits (content-addressed: one small file per source version)."""
    return cache_root() / "source-pins" / f"{pinned}.json"


def pin() -> str:
    """Pins the source as it is now, unless a command that started this one already did.

    Returns:
        The pinned digest (also in ``os.environ[ENV]``).
    """
    if not os.environ.get(ENV):
        files = fingerprint()
        os.environ[ENV] = digest(files)
        try:  # for the processes this one starts: without it they can only give digests
            _kept(os.environ[ENV]).parent.mkdir(parents=True, exist_ok=True)
            _kept(os.environ[ENV]).write_text(json.dumps(files), encoding="utf-8")
        except OSError:
            pass
    return os.environ[ENV]


def current() -> str:
    """The digest of the source runs start with now: the pin, else the files as they are."""
    return os.environ.get(ENV) or digest(fingerprint())


def moved() -> str | None:
    """Why a run must not start (the source changed since the pin), or None.

    Without a pin (``run`` called from Python, not from a command) there is nothing to hold
    the source to, and nothing is said.
    """
    pinned = os.environ.get(ENV)
    if not pinned:
        return None
    now = fingerprint()
    if digest(now) == pinned:
        return None
    try:
        then = json.loads(_kept(pinned).read_text(encoding="utf-8"))
        changed = sorted(n for n in then.keys() | now.keys() if then.get(n) != now.get(n))
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if changed[5:] else "")
    except (OSError, ValueError, AttributeError):  # pinned on another machine: digests only
        shown = f"source digest {pinned} -> {digest(now)}"
    return (
        f"peftbench's code or configuration changed since this command started ({shown}); "
        "a run started now would record a recipe or code that is not what the sweep ran. "
        "Run the same command again to go on with the new version"
    )


def holds(run_id: str) -> bool:
    """Whether ``run_id`` may start; if not, says why (in full for the first run refused)."""
    why = moved()
    if why is None:
        return True
    if not _refused:
        log.error("%s: not started: %s", run_id, why)
    else:  # a sweep's 40 other jobs: one short line each (the sweep counts them at its end)
        log.info("%s: not started: the source changed (said above)", run_id)
    _refused.append(run_id)
    return False
