"""The raw reference of an evaluation example, found again from its encoded batch row.

A metric must score against the data as written: sacreBLEU against the raw target text (not
the target as an uncased tokenizer round-trips it, lowercased, ``[UNK]`` dropped, cut at
``max_target_length``), STS-B against the true float score (not the 0.2-rounded target text
the model is trained to write). Batches hold tensors only (every batch reaches
``model(**batch)``, in training, evaluation and the cost measurements), so the raw value
cannot travel with the batch; it is looked up instead by the row's encoding: the real input
tokens and the labelled tokens, which :meth:`Task.encode` produces from the row.

The table is built once, on first use, by encoding the evaluation splits again with the
model's tokenizer (so it is right whether the loaders' features came from the cache or not,
and whatever process collated them). Two rows encode alike only if their sources encode
alike, and then an encoder-decoder or greedy/beam decoder predicts the same for both: their
raw references are handed out in turn, so a corpus metric pairs every raw reference with
that one prediction exactly once per pass over the split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tasks.base import IGNORE_INDEX

Key = tuple[tuple[int, ...], tuple[int, ...]]


def feature_key(input_ids: Sequence[int], labels: Sequence[int]) -> Key:
    """The lookup key of an encoded example: its input ids and its labelled token ids."""
    return tuple(int(i) for i in input_ids), tuple(int(t) for t in labels if t != IGNORE_INDEX)


def batch_keys(batch: dict) -> list[Key]:
    """The keys of a collated batch's rows (padding dropped from both sides)."""
    keys = []
    for ids, mask, labels in zip(
        batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True
    ):
        keys.append(feature_key(ids[mask.bool()].tolist(), labels.tolist()))
    return keys


class RawReferences:
    """Raw references by encoding, over the task's splits: dev and test first, train on a miss.

    Evaluation reads dev and test only, so a run tokenizes those again (cheap); the train
    split, possibly large, is added only if a row is not found there.
    """

    def __init__(self, raw: Callable[[dict], Any]) -> None:
        self._raw = raw  # row -> its raw reference (the target text, the float score)
        self._table: dict[Key, list[Any]] = {}
        self._pending: list[str] | None = None  # splits not yet in the table, in this order
        self._turn: dict[Key, int] = {}

    def _add(self, task: Any, split: str) -> None:
        rows = task.splits[split]
        for row, feature in zip(rows, task.encode(rows, task.tokenizer), strict=True):
            key = feature_key(feature["input_ids"], feature["labels"])
            self._table.setdefault(key, []).append(self._raw(row))

    def _find(self, task: Any, key: Key) -> list[Any] | None:
        if self._pending is None:
            names = list(task.splits)
            self._pending = [n for n in names if n != "train"] + [n for n in names if n == "train"]
        while key not in self._table and self._pending:
            self._add(task, self._pending.pop(0))
        return self._table.get(key)

    def lookup(self, task: Any, batch: dict) -> list[Any]:
        """The raw reference of every row of ``batch``.

        Raises:
            KeyError: a row matches no example of the task (the batch is from another task,
                or was encoded with another tokenizer).
        """
        found = []
        for key in batch_keys(batch):
            values = self._find(task, key)
            if values is None:
                raise KeyError(
                    f"task {task.name!r}: a batch row matches no example of the task, so its "
                    "raw reference is unknown (was it encoded with another tokenizer?)"
                )
            turn = self._turn.get(key, 0)
            self._turn[key] = turn + 1
            found.append(values[turn % len(values)])
        return found
