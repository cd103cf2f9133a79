"""Data-parallel training of one run over several processes (torchrun or accelerate launch).

``torchrun --nproc_per_node=N run.py ...`` starts N copies of the run; each reads its rank
from the environment (RANK, WORLD_SIZE, LOCAL_RANK, set by torchrun and accelerate alike).
The harness then:

- splits every training batch into N equal parts, one per rank, so the global batch, the
  number of steps and the learning-rate schedule are the single-process recipe's;
- averages gradients across ranks (DistributedDataParallel; NCCL on GPUs, gloo on CPUs);
- deals evaluation batches out round-robin and gathers every rank's predictions before
  computing metrics, so dev selection and test metrics cover each example exactly once and
  every rank makes the same best-step decision;
- writes the record and the tracker from rank 0 only.

Outside torchrun every helper is a no-op, so the single-process path is unchanged.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process writes records, reports and tracker runs (rank 0, or alone)."""
    return rank() == 0


def active() -> bool:
    return world_size() > 1 and dist.is_available() and dist.is_initialized()


def init(device: torch.device) -> None:
    """Joins the process group torchrun describes (once per process; no-op when alone)."""
    if world_size() > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        atexit.register(shutdown)  # torch warns about (and may leak) a group left open


def local_device() -> torch.device | None:
    """``cuda:<LOCAL_RANK>`` for a data-parallel rank on a GPU node, else None."""
    if "LOCAL_RANK" in os.environ and world_size() > 1 and torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}")
    return None


class ShardedBatches:
    """This rank's share of a batch sampler.

    ``split=True`` (training): every rank gets a slice of every batch, so all ranks step
    together; a batch smaller than the world gives its last example to the ranks left empty.
    ``split=False`` (evaluation): whole batches, dealt out round-robin; no example twice.
    """

    def __init__(self, batches: Iterable[list[int]], *, split: bool) -> None:
        self.batches = batches
        self.split = split
        # loaders.first_batches rewinds the training sampler's generator; keep it reachable.
        self.generator = getattr(batches, "generator", None)

    def __len__(self) -> int:
        n = len(self.batches)  # type: ignore[arg-type]
        return n if self.split else len(range(rank(), n, world_size()))

    def __iter__(self) -> Iterator[list[int]]:
        r, n = rank(), world_size()
        for k, batch in enumerate(self.batches):
            if self.split:
                yield batch[r::n] or batch[-1:]
            elif k % n == r:
                yield batch


def shard(batches: Any, *, split: bool) -> Any:
    """``batches`` as this rank sees them (unchanged in a single process)."""
    return ShardedBatches(batches, split=split) if world_size() > 1 else batches


def gather(items: list) -> list:
    """Every rank's items, concatenated in rank order (the items themselves when alone)."""
    if not active():
        return items
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]


def mean(value: float) -> float:
    """The mean of a scalar across ranks (e.g. the training loss of the global batch)."""
    if not active():
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return tensor.item() / dist.get_world_size()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model under DistributedDataParallel (the model itself when alone).

    Buffers are not synced before each forward: the models here have no running statistics,
    and a sync would make every forward a collective.
    """
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (else the model itself)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def info() -> dict | None:
    """What the record says about data parallelism (None for a single process)."""
    if not active():
        return None
    return {"world_size": dist.get_world_size(), "backend": dist.get_backend()}


def shutdown() -> None:
    """Leaves the process group (registered at exit by :func:`init`)."""
    if active():
        dist.destroy_process_group()
