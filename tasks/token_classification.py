"""Token classification (NER): a BIO tag per word, scored per entity with seqeval.

Words are split into sub-words by the tokenizer. Each word's tag goes on its first sub-word;
the other sub-words and the special tokens get -100, which the loss ignores, so every word
counts once in training and in evaluation (the convention of BERT's CoNLL-2003 recipe).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tasks.base import IGNORE_INDEX, TASK_KINDS, Task


def align_labels(word_ids: Sequence[int | None], tags: Sequence[int]) -> list[int]:
    """Per-token labels: the word's tag on its first sub-word, -100 everywhere else.

    Args:
        word_ids: for each token, the index of the word it came from (None: special token).
        tags: one tag index per word.

    Returns:
        One label per token.
    """
    labels, previous = [], None
    for word in word_ids:
        labels.append(IGNORE_INDEX if word is None or word == previous else tags[word])
        previous = word
    return labels


@TASK_KINDS.register("token_classification")
class TokenClassificationTask(Task):
    kind = "token_classification"
    head = "token_classification"
    peft_task_type = "TOKEN_CLS"

    @property
    def labels(self) -> list[str]:
        return list(self.cfg.labels)

    @property
    def split_text_key(self) -> str:
        return "tokens"

    def train_stratum(self, row: dict) -> bool:
        """``task.train_size`` keeps the share of sentences with an entity (a tag not ``O``)."""
        outside = self.labels.index("O") if "O" in self.labels else 0
        return any(tag != outside for tag in row["tags"])

    def model_kwargs(self) -> dict:
        return {
            "num_labels": len(self.labels),
            "id2label": dict(enumerate(self.labels)),
            "label2id": {name: i for i, name in enumerate(self.labels)},
        }

    def encode(self, rows: Sequence[dict], tokenizer: Any) -> list[dict]:
        """Tokenizes pre-split words (needs a fast tokenizer for ``word_ids``)."""
        enc = tokenizer(
            [row["tokens"] for row in rows],
            is_split_into_words=True,
            truncation=True,
            max_length=int(self.cfg.max_length),
        )
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        return [
            {
                **{k: enc[k][i] for k in keys},
                "labels": align_labels(enc.word_ids(i), row["tags"]),
            }
            for i, row in enumerate(rows)
        ]

    def collate(self, features: Sequence[dict], tokenizer: Any) -> dict[str, torch.Tensor]:
        """Pads inputs with the tokenizer and labels with -100, on the tokenizer's side."""
        labels = [list(f["labels"]) for f in features]
        batch = tokenizer.pad(
            [{k: v for k, v in f.items() if k != "labels"} for f in features], return_tensors="pt"
        )
        width = batch["input_ids"].shape[1]
        pad_left = getattr(tokenizer, "padding_side", "right") == "left"
        padded = [
            [IGNORE_INDEX] * (width - len(row)) + row
            if pad_left
            else row + [IGNORE_INDEX] * (width - len(row))
            for row in labels
        ]
        batch["labels"] = torch.tensor(padded, dtype=torch.long)
        return batch

    def _tags(self, ids: torch.Tensor, labels: torch.Tensor) -> list[list[str]]:
        """Tag names at the labelled positions (first sub-words) of each sequence."""
        names = self.labels
        return [
            [names[i] for i in row[mask].tolist()]
            for row, mask in zip(ids, labels != IGNORE_INDEX, strict=True)
        ]

    def predict(self, outputs: Any, batch: dict) -> list[list[str]]:
        return self._tags(outputs.logits.argmax(dim=-1), batch["labels"])

    def references(self, batch: dict) -> list[list[str]]:
        return self._tags(batch["labels"], batch["labels"])
