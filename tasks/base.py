"""The task protocol: what every task kind provides to the harness."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cached_property
from typing import Any, ClassVar

import torch

import tasks.metrics as metric_lib
from peftbench.registry import Registry
from tasks.splits import (
    SPLITS,
    grouped_split,
    is_extra_test,
    nested_subset,
    stratified_split,
    train_size_count,
)

TASK_KINDS: Registry[type[Task]] = Registry("task kind")

IGNORE_INDEX = -100  # torch's CrossEntropyLoss default ignore_index


def pad_rows(rows: Sequence[Sequence[int]], value: int, *, left: bool = False) -> torch.Tensor:
    """Pads lists of ids to one width with ``value``, on the left or the right."""
    width = max(len(row) for row in rows)
    fill = [[value] * (width - len(row)) for row in rows]
    padded = [f + list(r) if left else list(r) + f for f, r in zip(fill, rows, strict=True)]
    return torch.tensor(padded, dtype=torch.long)


def decoder_targets(
    tokenizer: Any, texts: Sequence[str], max_length: int | None = None
) -> tuple[list[list[int]], list[bool]]:
    """Token ids of an encoder-decoder's targets (its labels), and which hit ``max_length``.

    A BERT-style tokenizer opens with [CLS]: that is the decoder's start token, which the
    model prepends when it shifts the labels, so it is no label itself.
    """
    truncate = {"truncation": True, "max_length": max_length} if max_length else {}
    rows = tokenizer(text_target=list(texts), **truncate)["input_ids"]
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    hit = [bool(max_length) and len(row) >= max_length for row in rows]
    ids = [list(row[1:]) if start is not None and row and row[0] == start else list(row)
           for row in rows]  # fmt: skip
    return ids, hit


class Task:
    """A task = a data source + a split + preprocessing + prediction + metrics.

    Subclasses set the class attributes and implement the encoding and prediction steps.
    ``cfg`` is the task's config group (``conf/task/<name>.yaml``).
    """

    kind: ClassVar[str]
    #: Which transformers auto-class carries the right head for this kind.
    head: ClassVar[str]
    #: The peft ``TaskType`` name, so peft wraps the model the right way.
    peft_task_type: ClassVar[str]
    #: The row field a split is stratified by (None: one stratum, e.g. regression or NER).
    stratify_key: ClassVar[str | None] = None
    #: The model's tokenizer, set when the model is loaded (generative kinds decode with it).
    tokenizer: Any = None
    #: The run's seed: picks the training subset of ``task.train_size`` (``build_task``).
    seed: int = 0

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.name: str = cfg.name
        self.version: int = int(cfg.version)

    # -- data ---------------------------------------------------------------------------
    def read_rows(self) -> list[dict] | dict[str, list[dict]]:
        """Reads every example of the source: one list, or a dict per split if pre-split."""
        from tasks.readers import READERS

        return READERS.get(self.cfg.source.reader)(self.cfg.source)

    @property
    def split_text_key(self) -> str | list[str]:
        """The row field(s) hashed to rank examples for the split."""
        return list(self.cfg.text_fields)

    @cached_property
    def full_splits(self) -> dict[str, list[dict]]:
        """The train/dev/test examples, deterministic for a given task version.

        A pre-split source keeps its splits; otherwise ``split.by`` (a row field) keeps each
        group in one split, and without it rows are stratified by ``stratify_key``.
        """
        data = self.read_rows()
        splits = data if isinstance(data, dict) else self._split(data)
        self._check_splits(splits)
        extra = {name: rows for name, rows in splits.items() if is_extra_test(name)}
        return {name: splits[name] for name in SPLITS} | extra

    @cached_property
    def splits(self) -> dict[str, list[dict]]:
        """The splits a run uses: :attr:`full_splits`, train cut to ``task.train_size``.

        Dev and test are never touched. The subset is stratified (:meth:`train_stratum`),
        nested across sizes and fixed per seed (``tasks.splits.nested_subset``); a size
        above the train split keeps it whole here and is refused by the experiment.
        """
        full = self.full_splits
        requested = self.cfg.get("train_size")
        if requested is None:
            return full
        size = train_size_count(requested, len(full["train"]))
        train = nested_subset(
            full["train"],
            size,
            seed=self.seed,
            salt=str(self.cfg.split.salt),
            text_key=self.split_text_key,
            stratum=self.train_stratum,
        )
        return {**full, "train": train}

    def train_stratum(self, row: dict) -> object:
        """The stratum of a training row for ``task.train_size``: its label, or one for all."""
        return row.get(self.stratify_key) if self.stratify_key else None

    def train_size_facts(self) -> dict:
        """The record's ``data`` fields of ``task.train_size``: what was asked, from how many."""
        return {
            "train_size_requested": self.cfg.get("train_size"),
            "n_train_full": len(self.full_splits["train"]),
        }

    def _split(self, rows: list[dict]) -> dict[str, list[dict]]:
        split = self.cfg.split
        fractions, salt = dict(split.fractions), str(split.salt)
        if split.get("by"):
            self._check_field(rows, str(split.by))
            return grouped_split(rows, fractions=fractions, salt=salt, group_key=str(split.by))
        return stratified_split(
            rows,
            fractions=fractions,
            salt=salt,
            text_key=self.split_text_key,
            label_key=self.stratify_key,
        )

    @property
    def _where(self) -> str:
        """The data file to name in an error message."""
        return str(self.cfg.source.get("path") or self.cfg.source.get("file") or self.name)

    def _check_field(self, rows: list[dict], field: str) -> None:
        from peftbench.errors import DataError

        if rows and field not in rows[0]:
            raise DataError(
                f"{self._where}: rows have no field {field!r} to split by "
                f"(have {sorted(rows[0])}); fix the task's split.by"
            )

    def _check_splits(self, splits: dict[str, list[dict]]) -> None:
        from peftbench.errors import DataError

        where = self._where
        for name in SPLITS:
            if not splits.get(name):
                raise DataError(
                    f"{where}: the {name} split is empty; add data for it or change split.fractions"
                )

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 over the task version and every split's examples: changes iff data does."""
        h = hashlib.sha256(f"{self.name}:{self.version}".encode())
        for name in sorted(self.splits):
            h.update(name.encode())
            h.update(json.dumps(self.splits[name], sort_keys=True, default=str).encode())
        return h.hexdigest()[:16]

    # -- per-kind steps -----------------------------------------------------------------
    def model_kwargs(self) -> dict:
        """Extra keyword arguments for the model's ``from_pretrained`` (e.g. num_labels)."""
        return {}

    def encode(self, rows: Sequence[dict], tokenizer: Any) -> list[dict]:
        raise NotImplementedError

    def count_truncated(self, features: Sequence[dict]) -> int:
        """How many encoded examples hit ``max_length`` (and so may have lost text)."""
        return sum(len(f["input_ids"]) >= int(self.cfg.max_length) for f in features)

    def collate(self, features: Sequence[dict], tokenizer: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def predict(self, outputs: Any, batch: dict) -> list:
        raise NotImplementedError

    def predict_batch(self, model: Any, batch: dict) -> list:
        """Predictions for one evaluation batch: one forward pass, read by ``predict``.

        Generative kinds (translation) override this to call ``model.generate`` instead.
        """
        return self.predict(model(**batch), batch)

    def predict_scored(self, model: Any, batch: dict) -> tuple[list, list[float] | None]:
        """Predictions with the predicted class's probability (None: the kind has no class).

        What a record's predictions file keeps (peftbench/records/predictions.py);
        classification kinds override it.
        """
        return self.predict_batch(model, batch), None

    def references(self, batch: dict) -> list:
        raise NotImplementedError

    # -- metrics ------------------------------------------------------------------------
    @property
    def metric_names(self) -> list[str]:
        return list(self.cfg.metrics)

    @property
    def primary_metric(self) -> str:
        return str(self.cfg.primary_metric)

    @property
    def higher_is_better(self) -> bool:
        return metric_lib.METRICS[self.primary_metric].higher_is_better

    @property
    def metric_impl(self) -> str:
        return str(self.cfg.get("metric_impl") or metric_lib.BUILTIN)

    @cached_property
    def hub_metric(self) -> metric_lib.HubMetric | None:
        """``task.metric_impl=evaluate``: the Hub metric (loaded once; needs network)."""
        if self.metric_impl != metric_lib.EVALUATE:
            return None
        return metric_lib.load_hub_metric(self.name, self.cfg.get("evaluate"), self.metric_names)

    def load_metrics(self) -> None:
        """Loads ``task.metric_impl=evaluate``'s Hub metric now, or raises its ConfigError."""
        _ = self.hub_metric

    @property
    def metric_implementation(self) -> dict[str, str]:
        """Which implementation scores each metric: ``builtin`` (with sacreBLEU's signature for
        BLEU and chrF) or the Hub metric's source."""
        hub = self.hub_metric
        return {
            name: hub.source
            if hub and name in hub.keys
            else metric_lib.METRICS[name].implementation()
            for name in self.metric_names
        }

    def compute_metrics(self, preds: Sequence, refs: Sequence) -> dict[str, float]:
        hub = self.hub_metric
        own = [name for name in self.metric_names if not hub or name not in hub.keys]
        scores = metric_lib.compute(own, preds, refs)
        if hub:
            scores.update(hub.compute(preds, refs))
        return {name: scores[name] for name in self.metric_names}


def build_task(cfg: Any, seed: int = 0) -> Task:
    """Instantiates the task kind named by ``cfg.kind``; ``seed`` picks a train subset."""
    task = TASK_KINDS.get(cfg.kind)(cfg)
    task.seed = int(seed)
    return task
