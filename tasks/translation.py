"""Translation: a source sentence -> a target sentence, scored with sacreBLEU BLEU and chrF.

Two model families, chosen by the task config's ``model_family`` (``${model.family}``):

- ``encoder_decoder`` (T5, a warm-started MiniLM->MiniLM, ...): the source is the encoder
  input, the target the labels; the model shifts the labels into decoder inputs itself.
- ``decoder`` (causal LMs): one sequence ``prompt + target + eos``; the prompt's labels are
  -100, so the loss is on the target tokens only. At evaluation the model continues the
  prompt alone (left-padded) and its first line is the translation.

Evaluation generates (greedy or beam search, ``task.generation``) and decodes the
predictions with the model's tokenizer; sacreBLEU scores that detokenised text against the
raw target text of each example (tasks/references.py), not against the label ids decoded
back (which an uncased tokenizer lowercases, drops ``[UNK]`` from and cuts at
``max_target_length``, so decoding them would score an easier, different reference).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import torch
from omegaconf import OmegaConf

from tasks.base import IGNORE_INDEX, TASK_KINDS, Task, decoder_targets, pad_rows
from tasks.references import RawReferences


def subsample(rows: list[dict], limit: int | None, salt: str) -> list[dict]:
    """At most ``limit`` rows, picked by SHA-256 rank of their text (input order kept)."""
    if not limit or len(rows) <= limit:
        return rows

    def rank(i: int) -> str:
        text = f"{salt}\x00{rows[i]['source']}\x00{rows[i]['target']}\x00{i}"
        return hashlib.sha256(text.encode()).hexdigest()

    keep = sorted(sorted(range(len(rows)), key=rank)[:limit])
    return [rows[i] for i in keep]


@TASK_KINDS.register("translation")
class TranslationTask(Task):
    kind = "translation"

    @property
    def causal(self) -> bool:
        """Decoder-only translation (prompt + target) instead of encoder-decoder."""
        return str(self.cfg.get("model_family") or "encoder_decoder") == "decoder"

    @property
    def head(self) -> str:  # type: ignore[override]
        return "causal_lm" if self.causal else "seq2seq_lm"

    @property
    def peft_task_type(self) -> str:  # type: ignore[override]
        return "CAUSAL_LM" if self.causal else "SEQ_2_SEQ_LM"

    @property
    def split_text_key(self) -> list[str]:
        return ["source", "target"]

    @cached_property
    def full_splits(self) -> dict[str, list[dict]]:
        """The split (by book) first, then ``max_examples`` per split: test books stay put."""
        limits = dict(self.cfg.get("max_examples") or {})
        salt = str(self.cfg.split.salt)
        full = super().full_splits
        return {name: subsample(rows, limits.get(name), salt) for name, rows in full.items()}

    # -- encoding -----------------------------------------------------------------------------
    def encode(self, rows: Sequence[dict], tokenizer: Any) -> list[dict]:
        return (self._encode_causal if self.causal else self._encode_seq2seq)(rows, tokenizer)

    def _encode_seq2seq(self, rows: Sequence[dict], tokenizer: Any) -> list[dict]:
        max_source, max_target = int(self.cfg.max_length), int(self.cfg.max_target_length)
        src = tokenizer([r["source"] for r in rows], truncation=True, max_length=max_source)
        targets, target_hit = decoder_targets(tokenizer, [r["target"] for r in rows], max_target)
        features = []
        for i, labels in enumerate(targets):
            truncated = len(src["input_ids"][i]) >= max_source or target_hit[i]
            features.append(
                {
                    "input_ids": src["input_ids"][i],
                    "attention_mask": src["attention_mask"][i],
                    "labels": labels,
                    "truncated": int(truncated),
                }
            )
        return features

    def _prompt_parts(self) -> tuple[str, str]:
        """The prompt before and after the source sentence (``{source}`` in ``task.prompt``)."""
        names = {"source_lang": self.cfg.source_lang, "target_lang": self.cfg.target_lang}
        before, after = str(self.cfg.prompt).split("{source}")
        return before.format(**names), after.format(**names)

    def _encode_causal(self, rows: Sequence[dict], tokenizer: Any) -> list[dict]:
        max_source, max_target = int(self.cfg.max_length), int(self.cfg.max_target_length)
        before, after = self._prompt_parts()
        head = tokenizer(before)["input_ids"]  # with the BOS token, if the model uses one
        if len(head) > 1 and head[-1] == tokenizer.eos_token_id:
            head = head[:-1]
        tail = tokenizer(after, add_special_tokens=False)["input_ids"]
        features = []
        for row in rows:
            source = tokenizer(row["source"], add_special_tokens=False)["input_ids"]
            target = tokenizer(" " + row["target"], add_special_tokens=False)["input_ids"]
            truncated = len(source) > max_source or len(target) > max_target - 1
            prompt = head + source[:max_source] + tail
            answer = target[: max_target - 1] + [tokenizer.eos_token_id]
            features.append(
                {
                    "input_ids": prompt + answer,
                    "attention_mask": [1] * (len(prompt) + len(answer)),
                    "labels": [IGNORE_INDEX] * len(prompt) + answer,
                    "truncated": int(truncated),
                }
            )
        return features

    def count_truncated(self, features: Sequence[dict]) -> int:
        """Examples whose source or target hit its token limit (and so may have lost text)."""
        return sum(int(f["truncated"]) for f in features)

    def collate(self, features: Sequence[dict], tokenizer: Any) -> dict[str, torch.Tensor]:
        """Pads ids with the pad token, masks with 0 and labels with -100, on the tokenizer's side
        for causal LMs (an encoder-decoder pads its labels on the right, after the eos)."""
        left = self.causal and getattr(tokenizer, "padding_side", "right") == "left"
        pads = {"input_ids": tokenizer.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        return {k: pad_rows([f[k] for f in features], v, left=left) for k, v in pads.items()}

    # -- prediction ---------------------------------------------------------------------------
    def generation_kwargs(self) -> dict:
        """``model.generate`` arguments from ``task.generation`` (greedy unless num_beams > 1)."""
        kwargs = OmegaConf.to_container(self.cfg.generation, resolve=True)
        return {"do_sample": False, **{k: v for k, v in kwargs.items() if v is not None}}

    def predict_batch(self, model: Any, batch: dict) -> list[str]:
        """Generates translations of a batch and decodes them to text."""
        if not self.causal:
            out = model.generate(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                **self.generation_kwargs(),
            )
            return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
        prompts = self._prompts(batch)
        device = batch["input_ids"].device
        ids = pad_rows(prompts, self.tokenizer.pad_token_id, left=True).to(device)
        mask = pad_rows([[1] * len(p) for p in prompts], 0, left=True).to(device)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            **self.generation_kwargs(),
        )
        texts = self.tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
        return [(t.strip().splitlines() or [""])[0] for t in texts]  # the answer's first line

    @staticmethod
    def _prompts(batch: dict) -> list[list[int]]:
        """Each row's prompt: its real tokens whose label is -100 (contiguous, padding aside)."""
        keep = (batch["attention_mask"] == 1) & (batch["labels"] == IGNORE_INDEX)
        return [row[mask].tolist() for row, mask in zip(batch["input_ids"], keep, strict=True)]

    @cached_property
    def _raw_references(self) -> RawReferences:
        return RawReferences(lambda row: str(row["target"]).strip())

    def references(self, batch: dict) -> list[str]:
        """The raw target text of each row (as written in the data, whole, any case)."""
        return self._raw_references.lookup(self, batch)
