"""Sequence classification: one text (or a text pair) -> one of N labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tasks.base import TASK_KINDS, Task


@TASK_KINDS.register("classification")
class ClassificationTask(Task):
    kind = "classification"
    head = "sequence_classification"
    peft_task_type = "SEQ_CLS"

    @property
    def labels(self) -> list[str]:
        return list(self.cfg.labels)

    def model_kwargs(self) -> dict:
        return {
            "num_labels": len(self.labels),
            "id2label": dict(enumerate(self.labels)),
            "label2id": {name: i for i, name in enumerate(self.labels)},
        }

    def encode(self, rows: Sequence[dict], tokenizer: Any) -> list[dict]:
        """Tokenizes without padding (the collator pads per batch) and counts truncations."""
        fields = list(self.cfg.text_fields)
        texts = [[row[f] for row in rows] for f in fields]
        enc = tokenizer(*texts, truncation=True, max_length=int(self.cfg.max_length))
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        return [
            {**{k: enc[k][i] for k in keys}, "labels": row["label"]} for i, row in enumerate(rows)
        ]

    def collate(self, features: Sequence[dict], tokenizer: Any) -> dict[str, torch.Tensor]:
        return tokenizer.pad(list(features), return_tensors="pt")

    def predict(self, outputs: Any, batch: dict) -> list[int]:
        return outputs.logits.argmax(dim=-1).tolist()

    def references(self, batch: dict) -> list[int]:
        return batch["labels"].tolist()
