"""Sequence classification: one text or a text pair -> one of N labels, or a score.

``text_fields`` names one row field (single sentence) or two (a sentence pair, encoded as
``[CLS] a [SEP] b [SEP]`` by the tokenizer). The ``regression`` kind (STS-B-like) predicts one
float with a single-output head trained on mean squared error.

On an encoder-decoder (``model_family: encoder_decoder``, e.g. T5) both kinds are text-to-text,
as T5 and the Delta Tuning study run GLUE: the decoder's target is the label's word
(``label_words``, by default the label names) or the score as text, and the loss is the
decoder's. A class is predicted by rank classification (the label word the model finds most
likely), a score by generating it. peft's prompt learning (prompt, prefix, P-tuning) supports
T5's seq2seq LM but not its classification head, so this is also what lets those methods run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cached_property
from typing import Any, ClassVar

import torch

from tasks.base import IGNORE_INDEX, TASK_KINDS, Task, decoder_targets, pad_rows
from tasks.references import RawReferences


@TASK_KINDS.register("classification")
class ClassificationTask(Task):
    kind = "classification"
    stratify_key: ClassVar[str | None] = "label"

    @property
    def text_to_text(self) -> bool:
        """An encoder-decoder model: the label is the decoder's target text, not a head's class."""
        return str(self.cfg.get("model_family") or "encoder") == "encoder_decoder"

    @property
    def head(self) -> str:  # type: ignore[override]
        return "seq2seq_lm" if self.text_to_text else "sequence_classification"

    @property
    def peft_task_type(self) -> str:  # type: ignore[override]
        return "SEQ_2_SEQ_LM" if self.text_to_text else "SEQ_CLS"

    @property
    def labels(self) -> list[str]:
        return list(self.cfg.labels)

    @property
    def label_words(self) -> list[str]:
        """The decoder's target per class (text-to-text): ``label_words``, or the label names.

        The config check (peftbench/config/checks.py) makes sure there is one word per label.
        """
        words = self.cfg.get("label_words") or [name.replace("_", " ") for name in self.labels]
        return list(words)

    def model_kwargs(self) -> dict:
        if self.text_to_text:
            return {}  # the model's own LM head writes the label word
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
        labels = [row["label"] for row in rows]
        if self.text_to_text:
            labels = self._decoder_labels(tokenizer, labels)
        return [{**{k: enc[k][i] for k in keys}, "labels": labels[i]} for i in range(len(rows))]

    def _decoder_labels(self, tokenizer: Any, labels: list) -> list[list[int]]:
        """Text-to-text: each row's target is its class's label word, tokenized once per class."""
        targets = self._label_targets(tokenizer)  # words it cannot tell apart stop here
        return [targets[label] for label in labels]

    def collate(self, features: Sequence[dict], tokenizer: Any) -> dict[str, torch.Tensor]:
        if not self.text_to_text:
            return tokenizer.pad(list(features), return_tensors="pt")
        inputs = tokenizer.pad([{k: v for k, v in f.items() if k != "labels"} for f in features])
        batch = {k: torch.tensor(v) for k, v in inputs.items()}
        batch["labels"] = pad_rows([f["labels"] for f in features], IGNORE_INDEX)
        return batch

    def predict(self, outputs: Any, batch: dict) -> list:
        return outputs.logits.argmax(dim=-1).tolist()

    def predict_batch(self, model: Any, batch: dict) -> list:
        """A head's argmax, or (text-to-text) the label word the decoder scores highest."""
        return self.predict_scored(model, batch)[0]

    def predict_scored(self, model: Any, batch: dict) -> tuple[list, list[float]]:
        """The predicted class and its probability: the head's softmax, or (text-to-text)
        the softmax over the label words' scores.

        Rank classification: each label word is scored by the sum of its tokens'
        log-probabilities given the input, one teacher-forced decoder pass per class.
        """
        if not self.text_to_text:
            logits = model(**batch).logits.float()
        else:
            logits = self._label_scores(model, batch)
        probs = logits.softmax(dim=-1)
        best = probs.max(dim=-1)
        return best.indices.tolist(), best.values.tolist()

    def _label_scores(self, model: Any, batch: dict) -> torch.Tensor:
        """Per example and label word, the sum of the word's token log-probabilities."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        scores = []
        for target in self._label_targets(self.tokenizer):
            labels = torch.tensor(
                [target] * len(batch["input_ids"]), device=batch["input_ids"].device
            )
            logits = model(**inputs, labels=labels).logits.float()
            token_scores = logits.log_softmax(-1).gather(-1, labels.unsqueeze(-1))
            scores.append(token_scores.squeeze(-1).sum(-1))
        return torch.stack(scores, dim=-1)

    def _label_targets(self, tokenizer: Any) -> list[list[int]]:
        """Each label word's token ids; two words the tokenizer cannot tell apart are refused."""
        targets = decoder_targets(tokenizer, self.label_words)[0]
        if len({tuple(t) for t in targets}) < len(targets):
            raise ValueError(
                f"task {self.name}: label_words {self.label_words} give the same tokens "
                "for two labels; set task.label_words to words the model's tokenizer tells apart"
            )
        return targets

    def references(self, batch: dict) -> list:
        if not self.text_to_text:
            return batch["labels"].tolist()
        index = {tuple(t): i for i, t in enumerate(self._label_targets(self.tokenizer))}
        return [
            index[tuple(t for t in row if t != IGNORE_INDEX)] for row in batch["labels"].tolist()
        ]


@TASK_KINDS.register("regression")
class RegressionTask(ClassificationTask):
    """One score per text or pair (STS-B-like): ``num_labels=1``, MSE loss, correlations.

    transformers' sequence-classification heads switch to ``problem_type="regression"`` (MSE)
    when ``num_labels`` is 1 and the labels are floats; it is set explicitly here so a model
    config that says otherwise cannot turn it into classification.

    Text-to-text (an encoder-decoder), as T5 does STS-B: the target is the score rounded to
    a multiple of 0.2 and written with one decimal ("3.8"); the prediction is the generated
    number, and text that is no number counts as -1, T5's default. The references are the
    true float scores of the data (tasks/references.py), as GLUE scores STS-B, not the
    rounded training targets: rounding the references would score another task.
    """

    kind = "regression"
    stratify_key: ClassVar[str | None] = None  # a float label is no stratum
    #: T5's STS-B recipe: scores in fifths (steps of 0.2); unparsable output scores this.
    STEPS_PER_UNIT, UNPARSABLE = 5, -1.0

    @property
    def labels(self) -> list[str]:
        return [str(self.cfg.get("score_name") or "score")]

    def model_kwargs(self) -> dict:
        return {} if self.text_to_text else {"num_labels": 1, "problem_type": "regression"}

    def encode(self, rows: Sequence[dict], tokenizer: Any) -> list[dict]:
        features = super().encode(rows, tokenizer)
        if not self.text_to_text:
            for feature in features:
                feature["labels"] = float(feature["labels"])  # a float tensor, as MSE needs
        return features

    def target_text(self, label: Any) -> str:
        """The decoder's target for a score (text-to-text): "3.8"."""
        return f"{round(float(label) * self.STEPS_PER_UNIT) / self.STEPS_PER_UNIT:.1f}"

    def _decoder_labels(self, tokenizer: Any, labels: list) -> list[list[int]]:
        return decoder_targets(tokenizer, [self.target_text(y) for y in labels])[0]

    def predict(self, outputs: Any, batch: dict) -> list[float]:
        return outputs.logits.squeeze(-1).float().tolist()

    def predict_scored(self, model: Any, batch: dict) -> tuple[list[float], None]:
        return self.predict_batch(model, batch), None  # a score has no class probability

    def predict_batch(self, model: Any, batch: dict) -> list[float]:
        if not self.text_to_text:
            return self.predict(model(**batch), batch)  # the head's output
        out = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            max_new_tokens=8,
            do_sample=False,
        )
        return [self._number(t) for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def references(self, batch: dict) -> list[float]:
        if not self.text_to_text:
            return batch["labels"].tolist()
        return self._raw_references.lookup(self, batch)

    @cached_property
    def _raw_references(self) -> RawReferences:
        return RawReferences(lambda row: float(row["label"]))

    def _number(self, text: str) -> float:
        try:  # a word-level tokenizer decodes "3.8" as "3 . 8"
            value = float("".join(text.split()))
        except ValueError:
            return self.UNPARSABLE
        return value if math.isfinite(value) else self.UNPARSABLE
