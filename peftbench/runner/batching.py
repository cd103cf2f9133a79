"""Length-grouped batching: less padding, the same examples per epoch.

On CPU, padded positions cost as much as real tokens. Grouping examples of similar length
(the ``group_by_length`` scheme of transformers' Trainer) cuts the padded share of a batch
while keeping batches random: shuffle, cut into mega-batches of ``mega`` batches, sort each
mega-batch by length, split into batches, shuffle the batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Yields batches of indices of similar length; a fresh grouping every epoch."""

    def __init__(
        self, lengths: Sequence[int], batch_size: int, generator: torch.Generator, mega: int = 50
    ) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.generator = generator
        self.mega = mega
        self._epoch_start = generator.get_state()
        self._skip = 0

    def state_dict(self) -> dict:
        """The generator as the current epoch began: replaying it gives the epoch's order."""
        return {"generator": self._epoch_start}

    def load_state_dict(self, state: dict, *, skip: int) -> None:
        """Makes the next epoch replay the saved one without its first ``skip`` batches."""
        self.generator.set_state(state["generator"])
        self._skip = skip

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        self._epoch_start = self.generator.get_state()
        skip, self._skip = self._skip, 0  # batches a resumed run already trained on
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        size = self.batch_size * self.mega
        batches = []
        for start in range(0, len(order), size):
            group = sorted(order[start : start + size], key=lambda i: -self.lengths[i])
            batches += [
                group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)
            ]
        for b in torch.randperm(len(batches), generator=self.generator).tolist()[skip:]:
            yield batches[b]


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Evaluation batches in length order: minimal padding, order-independent metrics."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
