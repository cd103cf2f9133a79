"""Deterministic, documented train/dev/test splits.

Each example is ranked by the SHA-256 of (salt, text) inside its label, and the ranked list is
cut at the requested fractions. The split therefore depends only on the data and the salt:
not on the file's row order, the Python or NumPy version, or the run's seed. Stratifying by
label keeps the class balance of every split equal to the corpus's.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence

SPLITS = ("train", "dev", "test")


def _rank_key(salt: str, text: str, index: int) -> tuple[str, int]:
    digest = hashlib.sha256(f"{salt}\x00{text}".encode()).hexdigest()
    return digest, index  # the index breaks ties between duplicate texts


def stratified_split(
    rows: Sequence[dict],
    *,
    fractions: dict[str, float],
    salt: str,
    text_key: str = "text",
    label_key: str = "label",
) -> dict[str, list[dict]]:
    """Splits rows into train/dev/test, stratified by label, by hash rank.

    Args:
        rows: examples with a text and a label field.
        fractions: share of each split, e.g. {"train": 0.8, "dev": 0.1, "test": 0.1}.
        salt: changes the assignment; part of the task's identity (bump its version).
        text_key: field hashed to rank examples.
        label_key: field to stratify by; None-labelled corpora use one stratum.

    Returns:
        A dict split name -> rows, each split in ranked order.
    """
    if abs(sum(fractions.values()) - 1.0) > 1e-6 or set(fractions) != set(SPLITS):
        raise ValueError(f"split fractions must name {SPLITS} and sum to 1, got {fractions}")
    strata: dict[object, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        strata[row.get(label_key)].append(i)
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for label in sorted(strata, key=str):
        ranked = sorted(strata[label], key=lambda i: _rank_key(salt, str(rows[i][text_key]), i))
        n = len(ranked)
        n_train = round(n * fractions["train"])
        n_dev = round(n * fractions["dev"])
        out["train"] += [rows[i] for i in ranked[:n_train]]
        out["dev"] += [rows[i] for i in ranked[n_train : n_train + n_dev]]
        out["test"] += [rows[i] for i in ranked[n_train + n_dev :]]
    return out
