"""Synthetic fixed-length token batches, for cost benchmarks on a GPU (no data file).

The ``synthetic_tokens`` reader draws every split's sequences of random token ids from its
own seeded generator (``torch.Generator().manual_seed(source.seed)``): the same config gives
the same ids on every machine, and nothing is read or downloaded, so a GPU machine without
network or assets can run it. The ``synthetic_lm`` kind trains a decoder on them with the
causal-LM objective: the labels are the inputs (the model shifts them by one), so each of the
``max_length`` positions carries a loss and the LM head (the vocabulary projection) runs on
every token, as in language-model fine-tuning, which is what MFU figures are quoted for. A
sequence-classification head would read one position per sequence and skip that projection.

Scores are meaningless (random ids have nothing to learn): the record's ``data.synthetic`` is
true, the primary metric is next-token accuracy, and the model is usually
``llama-1b-synthetic`` (random weights too). Every sequence is exactly ``max_length`` long,
so there is no padding and no truncation: padded and non-padding tokens/s coincide.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from peftbench.errors import ConfigError, DataError
from tasks.base import TASK_KINDS, Task
from tasks.readers import READERS
from tasks.splits import SPLITS


@READERS.register("synthetic_tokens")
def read_synthetic_tokens(source: Any) -> dict[str, list[dict]]:
    """``source.n[split]`` rows per split of ``source.length`` ids in [0, ``vocab_size``).

    One generator, seeded with ``source.seed``, draws train, then dev, then test, so the
    splits are disjoint draws and each split's rows depend only on the config.
    """
    n, length, vocab = source.get("n") or {}, int(source.length), int(source.vocab_size)
    missing = [split for split in SPLITS if int(n.get(split) or 0) < 1]
    if missing or length < 2 or vocab < 2:
        raise DataError(
            f"synthetic_tokens: need source.n >= 1 for every split (missing {missing}), "
            f"source.length >= 2 (got {length}) and source.vocab_size >= 2 (got {vocab}); "
            "fix the task's source"
        )
    generator = torch.Generator().manual_seed(int(source.seed))
    rows = {}
    for split in SPLITS:
        ids = torch.randint(0, vocab, (int(n[split]), length), generator=generator)
        rows[split] = [{"input_ids": row} for row in ids.tolist()]
    return rows


@TASK_KINDS.register("synthetic_lm")
class SyntheticLMTask(Task):
    """Causal-LM training on fixed-length random ids; next-token accuracy as the metric."""

    kind = "synthetic_lm"
    head = "causal_lm"
    peft_task_type = "CAUSAL_LM"
    #: Read by the experiment into the record's ``data.synthetic``.
    synthetic = True

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        family = str(cfg.get("model_family") or "decoder")
        if family != "decoder":
            raise ConfigError(
                f"task {self.name!r} (kind synthetic_lm) trains a causal LM, but the model is "
                f"an {family} model",
                "choose a decoder, e.g. model=llama-1b-synthetic",
            )
        vocab, model_vocab = int(cfg.source.vocab_size), cfg.get("model_vocab_size")
        if model_vocab is not None and vocab > int(model_vocab):
            raise ConfigError(
                f"task.source.vocab_size {vocab} exceeds the model's vocabulary ({model_vocab}):"
                " ids beyond it have no logit to train",
                f"set task.source.vocab_size to at most {model_vocab}",
            )
        if int(cfg.source.length) != int(cfg.max_length):
            raise ConfigError(
                f"task.source.length {cfg.source.length} differs from task.max_length "
                f"{cfg.max_length}",
                "leave task.source.length at ${..max_length} and set task.max_length",
            )

    @property
    def split_text_key(self) -> str:
        return "input_ids"

    def encode(self, rows: Sequence[dict], tokenizer: Any) -> list[dict]:
        """The ids are the encoding: no tokenizer runs (it only supplies the pad token)."""
        return [{"input_ids": list(row["input_ids"])} for row in rows]

    def count_truncated(self, features: Sequence[dict]) -> int:
        return 0  # every sequence is drawn at exactly max_length: nothing is cut

    def collate(self, features: Sequence[dict], tokenizer: Any) -> dict[str, torch.Tensor]:
        ids = torch.tensor([f["input_ids"] for f in features], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    def predict(self, outputs: Any, batch: dict) -> list[int]:
        """The argmax next token at every position but the last (which predicts nothing).

        Prompt-learning methods (prompt tuning, P-tuning) prepend virtual tokens to the
        logits; the last ``length`` positions are the sequence's own.
        """
        length = batch["input_ids"].shape[1]
        logits = outputs.logits[:, -length:-1]
        return logits.argmax(dim=-1).flatten().tolist()

    def references(self, batch: dict) -> list[int]:
        return batch["labels"][:, 1:].flatten().tolist()
