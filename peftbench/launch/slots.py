"""Several runs on one machine: torch threads per run and one GPU per run.

A parallel launcher (joblib, submitit) starts several runs at once on one machine. Each run's
torch would use every core by default, so two runs on two cores would fight over four
threads; and every run would pick ``cuda:0``. ``train.threads=auto`` and ``device=auto`` fix
both from what the launcher config says (docs/SCALING.md).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from typing import IO, Any

#: Set by ``commands.call_all`` for sweeps run in lanes (several sweeps at once, one run at
#: a time each): how many, so ``train.threads=auto`` shares the cores among them.
LANES_ENV = "PEFTBENCH_LANES"
#: The lock file this process holds on its GPU while a run uses it (None: holds none).
_claimed: IO | None = None


def available_cores() -> int:
    """Cores this process may use (the affinity mask: taskset, SLURM and cgroups shrink it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def _launcher() -> dict:
    """The Hydra launcher config of the current job ({} outside a Hydra job)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return dict(HydraConfig.get().launcher or {})


def torch_threads(setting: Any, launcher: dict | None = None) -> int | None:
    """Torch intra-op threads for this run.

    Args:
        setting: ``train.threads``: an integer, or ``auto``.
        launcher: the Hydra launcher config (default: the current job's).

    Returns:
        The thread count, or None to keep torch's default (one run at a time: all cores).
        ``auto`` gives each of the runs the launcher runs at once an equal share of the cores:
        cores // n_jobs under joblib, ``cpus_per_task`` under submitit, cores // processes
        per node under torchrun; sweeps in lanes (:data:`LANES_ENV`) divide by the lanes too.
    """
    if setting != "auto":
        return int(setting)
    launcher = _launcher() if launcher is None else launcher
    cores = available_cores()
    lanes = max(1, int(os.environ.get(LANES_ENV) or 1))
    if os.environ.get("LOCAL_WORLD_SIZE"):  # torchrun / accelerate: ranks share the node
        return max(1, cores // int(os.environ["LOCAL_WORLD_SIZE"]))
    if launcher.get("cpus_per_task"):  # submitit: the scheduler reserved these cores
        return int(launcher["cpus_per_task"])
    n_jobs = launcher.get("n_jobs")
    if n_jobs:  # joblib: negative counts from the core count down, as joblib does
        concurrent = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)
        return max(1, cores // (concurrent * lanes))
    return max(1, cores // lanes) if lanes > 1 else None


def _lock_path(index: int) -> Path:
    folder = Path(tempfile.gettempdir()) / f"peftbench-gpu-locks-{os.getuid()}"
    folder.mkdir(exist_ok=True)
    return folder / f"gpu{index}.lock"


def claim_gpu(count: int, preferred: int = 0) -> int:
    """Claims a GPU no other run of this user holds; returns its index.

    Runs started at once by a parallel launcher each get their own device: the lock (an
    ``flock`` on a file per GPU, released when the run ends or the process dies) is tried on
    ``preferred`` first, then the others; if all are taken, waits for ``preferred``.

    Args:
        count: visible CUDA devices.
        preferred: the device to try first (the job number, modulo ``count``).
    """
    global _claimed
    release_gpu()
    order = [(preferred + k) % count for k in range(count)]
    for index in order:
        handle = _lock_path(index).open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _claimed = handle
        return index
    handle = _lock_path(order[0]).open("a")
    fcntl.flock(handle, fcntl.LOCK_EX)  # every GPU is busy: queue for the preferred one
    _claimed = handle
    return order[0]


def release_gpu() -> None:
    """Releases the GPU this process claimed, if any (the next run may take it)."""
    global _claimed
    if _claimed is not None:
        _claimed.close()  # closing the file drops the flock
        _claimed = None


def job_number() -> int:
    """This job's number in the sweep (0 outside a Hydra multirun)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return 0
    return int(HydraConfig.get().job.get("num") or 0)


def slurm_script(launcher: dict, n_jobs: int) -> str:
    """The sbatch script the ``slurm`` launcher preset submits for a sweep of ``n_jobs`` runs.

    Builds submitit's executor as the launcher does (peftbench/launch/slurm.py,
    ``make_executor``), so what it prints is what the cluster gets. Needs
    ``srun`` on the PATH (submitit checks for it), i.e. a SLURM login node.

    Args:
        launcher: the resolved ``hydra.launcher`` config (e.g. of ``hydra/launcher=slurm``).
        n_jobs: the runs of the sweep (one array task each).
    """
    from peftbench.launch.slurm import make_executor

    executor = make_executor(launcher)  # what the launcher submits, its setup lines included
    # submitit has no public preview of the script: these two private names are the way
    slurm = executor._executor
    slurm.parameters["map_count"] = n_jobs  # what submitit's map_array sets for an array
    return slurm._make_submission_file_text("<python -u -m submitit.core._submit ...>", "preview")
