"""A task's splits as data loaders: tokenized once (cached on disk), batched by length."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from peftbench.runner import data_parallel
from peftbench.runner.batching import LengthGroupedBatchSampler, sorted_batches
from peftbench.runner.data_cache import cache_key, cached_encode


def make_loaders(
    task: Any,
    tokenizer: Any,
    cfg: Any,
    *,
    seed: int,
    cache_dir: Path | None,
    pin_memory: bool = False,
) -> tuple[dict[str, DataLoader], dict]:
    """Encodes every split (through the on-disk cache); returns loaders and data facts.

    The facts: how many examples each split truncated, and whether the encodings came from
    the cache and how long loading or tokenizing took. ``train.num_workers`` collate in
    background processes; pinned memory speeds up host-to-GPU copies.
    """
    collate = partial(task.collate, tokenizer=tokenizer)
    loaders, truncated, tokenize = {}, {}, {}
    for split, rows in task.splits.items():
        features, tokenize[split] = cached_encode(
            partial(task.encode, rows, tokenizer),
            key=cache_key(task, split, tokenizer),
            cache_dir=cache_dir,
        )
        truncated[split] = task.count_truncated(features)
        lengths = [len(f["input_ids"]) for f in features]
        if split == "train":
            batches = LengthGroupedBatchSampler(
                lengths, int(cfg.batch_size), torch.Generator().manual_seed(seed)
            )
        else:
            batches = sorted_batches(lengths, int(cfg.eval_batch_size))
        loaders[split] = DataLoader(
            features,
            batch_sampler=data_parallel.shard(batches, split=split == "train"),
            collate_fn=collate,
            num_workers=int(cfg.num_workers),
            pin_memory=pin_memory,
            # its own seed source: iterating must not draw from the global RNG that dropout
            # uses, or a run resumed mid-epoch would see other dropout masks
            generator=torch.Generator().manual_seed(seed),
        )
    return loaders, {"n_truncated": truncated, "tokenize": tokenize}


def first_batches(loader: DataLoader, device: torch.device, n: int) -> list[dict]:
    """The first ``n`` training batches on ``device`` (calibration data for a method).

    The shuffling generator is put back afterwards, so a method that reads calibration data
    trains on the same batch order as every other method of the sweep.
    """
    generator = loader.batch_sampler.generator
    state = generator.get_state()
    batches = [
        {k: v.to(device) for k, v in batch.items()}
        for _, batch in zip(range(n), loader, strict=False)
    ]
    generator.set_state(state)
    return batches
