"""Sequence classification: one text or a text pair -> one of N labels, or a score.

``text_fields`` names one row field (single sentence) or two (a sentence pair, encoded as
``[CLS] a [SEP] b [SEP]`` by the tokenizer). The ``regression`` kind (STS-B-like) predicts one
float with a single-output head trained on mean squared error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from tasks.base import TASK_KINDS, Task


@TASK_KINDS.register("classification")
class ClassificationTask(Task):
    kind = "classification"
    head = "sequence_classification"
    peft_task_type = "SEQ_CLS"
    stratify_key: ClassVar[str | None] = "label"

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
        """Tokenizes without padding (the collator pads per batch); a pair is two segments."""
        fields = list(self.cfg.text_fields)
        if not 1 <= len(fields) <= 2:
            raise ValueError(f"task {self.name}: text_fields needs 1 or 2 fields, got {fields}")
        texts = [[row[f] for row in rows] for f in fields]
        # Pairs: "longest_first" trims the longer segment first, so both sides keep text.
        enc = tokenizer(*texts, truncation=True, max_length=int(self.cfg.max_length))
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        return [
            {**{k: enc[k][i] for k in keys}, "labels": row["label"]} for i, row in enumerate(rows)
        ]

    def collate(self, features: Sequence[dict], tokenizer: Any) -> dict[str, torch.Tensor]:
        return tokenizer.pad(list(features), return_tensors="pt")

    def predict(self, outputs: Any, batch: dict) -> list:
        return outputs.logits.argmax(dim=-1).tolist()

    def references(self, batch: dict) -> list:
        return batch["labels"].tolist()


@TASK_KINDS.register("regression")
class RegressionTask(ClassificationTask):
    """One score per text or pair (STS-B-like): ``num_labels=1``, MSE loss, correlations.

    transformers' sequence-classification heads switch to ``problem_type="regression"`` (MSE)
    when ``num_labels`` is 1 and the labels are floats; it is set explicitly here so a model
    config that says otherwise cannot turn it into classification.
    """

    kind = "regression"
    stratify_key: ClassVar[str | None] = None  # a float label is no stratum

    @property
    def labels(self) -> list[str]:
        return [str(self.cfg.get("score_name") or "score")]

    def model_kwargs(self) -> dict:
        return {"num_labels": 1, "problem_type": "regression"}

    def encode(self, rows: Sequence[dict], tokenizer: Any) -> list[dict]:
        features = super().encode(rows, tokenizer)
        for feature in features:
            feature["labels"] = float(feature["labels"])  # a float tensor, as MSE needs
        return features

    def predict(self, outputs: Any, batch: dict) -> list[float]:
        return outputs.logits.squeeze(-1).float().tolist()
