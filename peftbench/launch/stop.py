"""Ending a chunk of a long benchmark now, losing no step: ``peftbench benchmark stop``.

A drain (``DIR/DRAIN``, :mod:`peftbench.launch.exit_codes`) lets the runs under way finish,
which on a 2-core machine can mean ten minutes of one core idle while the other lane ends
its run. Stopping instead writes the drain file (so no lane starts another run) and sends
SIGTERM to every process that holds a run's lock in the folder: each run ends its current
step, writes its checkpoint and an ``interrupted`` record, and the same benchmark command
later goes on from that step (a resumed run ends as the uninterrupted one would:
tests/test_faults.py). The lock names its holder (``host pid N``, written by
:func:`peftbench.records.store.claim_run`); only a lock still held is a live run, and only a
holder on this host can be signalled.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from peftbench.records.store import LOCKS_DIR

#: The drain file ``scripts/offline_benchmark.sh`` names for its folder (PEFTBENCH_DRAIN_FILE).
DRAIN_NAME = "DRAIN"


@dataclass(frozen=True)
class Claim:
    """A run under way: its lock file and the process holding it."""

    lock: Path
    host: str
    pid: int

    @property
    def run_id(self) -> str:
        return self.lock.stem


def held(lock: Path) -> bool:
    """Whether some process holds the lock now (its holder's flock; the file outlives it).

    The probe holds the lock for an instant: a lane claiming that run at the same instant
    skips it as under way. Harmless after the drain file exists (no lane starts a run).
    """
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def live_claims(results: Path) -> list[Claim]:
    """The runs under way in a benchmark folder (its stages' ``locks/``) or a results folder."""
    claims = []
    for lock in sorted(
        [*results.glob(f"{LOCKS_DIR}/*.lock"), *results.glob(f"*/{LOCKS_DIR}/*.lock")]
    ):
        if not held(lock):
            continue
        host, _, pid = lock.read_text().strip().rpartition(" pid ")
        if pid.isdigit():
            claims.append(Claim(lock, host, int(pid)))
    return claims


def stop_flow(results: Path, *, timeout_s: float = 300.0, poll_s: float = 0.5) -> int:
    """Drains the folder and stops its runs under way; waits until their locks are free.

    Returns:
        0 when every run under way on this host stopped (or none was); 1 when a run is held
        on another host (stop it there) or did not stop within ``timeout_s``.
    """
    (results / DRAIN_NAME).touch()
    print(f"[stop] wrote {results / DRAIN_NAME}: no lane starts another run")
    here = socket.gethostname()
    claims = live_claims(results)
    local = [c for c in claims if c.host == here]
    for claim in claims:
        if claim.host != here:
            print(f"[stop] {claim.run_id}: runs on host {claim.host} (pid {claim.pid}); "
                  "stop it there, or let the drain end it")  # fmt: skip
            continue
        try:
            os.kill(claim.pid, signal.SIGTERM)
            print(f"[stop] {claim.run_id}: SIGTERM to pid {claim.pid}")
        except ProcessLookupError:  # it ended between the lock check and now
            local.remove(claim)
    deadline = time.monotonic() + timeout_s
    waiting = list(local)
    while waiting and time.monotonic() < deadline:
        time.sleep(poll_s)
        waiting = [c for c in waiting if held(c.lock)]
    for claim in waiting:
        print(f"[stop] {claim.run_id}: still running after {timeout_s:g} s (pid {claim.pid})")
    stopped = len(local) - len(waiting)
    print(f"[stop] {stopped} run(s) stopped, each with its checkpoint once a step was done; the "
          "same benchmark command goes on from there (it removes DRAIN)")  # fmt: skip
    return 0 if not waiting and len(local) == len(claims) else 1
