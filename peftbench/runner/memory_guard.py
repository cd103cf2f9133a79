"""On CPU, a run that would need more memory than the machine has fails as ``oom``.

Without a cap, Linux overcommits: a batch far too large for RAM is allocated page by page
until the kernel's OOM killer ends the whole process (the sweep with it), leaving no record
and no line. With the process's data-segment limit (``RLIMIT_DATA``) set to what it uses now
plus what the machine has available, the allocation that would not fit fails at once with
torch's "can't allocate memory" error, which the run records as ``oom`` with what to lower.

GPU memory needs no guard: CUDA allocations fail with ``torch.OutOfMemoryError``.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Share of the available memory a run may take on top of what the process already holds;
#: the rest is left to the page cache and other processes.
AVAILABLE_SHARE = 0.9


def _status_kib(field: str, path: str) -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def headroom_bytes() -> int | None:
    """What a run may add to the process's data segment: a share of MemAvailable."""
    available = _status_kib("MemAvailable", "/proc/meminfo")
    return None if available is None else int(AVAILABLE_SHARE * available * 1024)


@contextmanager
def capped_memory(enabled: bool = True) -> Iterator[int | None]:
    """Caps the data segment for the block (Linux only; elsewhere it does nothing).

    Yields:
        The limit in bytes, or None when no cap was set.
    """
    used = _status_kib("VmData", "/proc/self/status")
    headroom = headroom_bytes()
    if not enabled or used is None or headroom is None:
        yield None
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = used * 1024 + headroom
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft != resource.RLIM_INFINITY:
        limit = min(limit, soft)  # a stricter limit set by the user or the scheduler stays
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
