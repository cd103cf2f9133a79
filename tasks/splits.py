"""Deterministic, documented train/dev/test splits.

Each example is ranked by the SHA-256 of (salt, text) inside its label, and the ranked list is
cut at the requested fractions. The split therefore depends only on the data and the salt:
not on the file's row order, the Python or NumPy version, or the run's seed. Stratifying by
label keeps the class balance of every split equal to the corpus's.

``grouped_split`` keeps whole groups (e.g. the books of the Bible) in one split, for corpora
whose examples near-duplicate each other within a group.

``nested_subset`` cuts the train split to ``task.train_size`` afterwards (dev and test are
untouched): stratified, nested across sizes and drawn per seed.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Sequence

SPLITS = ("train", "dev", "test")
#: Prefix of an extra test split, scored beside ``test`` with the same model at the same step
#: (MNLI's mismatched validation set: ``test_mismatched``). Its metrics are recorded as
#: ``<metric>_<suffix>`` in ``metrics.test`` (``accuracy_mismatched``).
EXTRA_TEST_PREFIX = "test_"


def is_extra_test(split: str) -> bool:
    return split.startswith(EXTRA_TEST_PREFIX) and len(split) > len(EXTRA_TEST_PREFIX)


def _rank_key(salt: str, text: str, index: int) -> tuple[str, int]:
    digest = hashlib.sha256(f"{salt}\x00{text}".encode()).hexdigest()
    return digest, index  # the index breaks ties between duplicate texts


def _hashed_text(row: dict, text_key: str | Sequence[str]) -> str:
    """The text an example is ranked by; several fields (a sentence pair) joined by NUL."""
    if isinstance(text_key, str):
        return str(row[text_key])  # one field: exactly the historical key (polarity-v1)
    return "\x00".join(str(row[k]) for k in text_key)


def _check_fractions(fractions: dict[str, float]) -> None:
    if abs(sum(fractions.values()) - 1.0) > 1e-6 or set(fractions) != set(SPLITS):
        raise ValueError(f"split fractions must name {SPLITS} and sum to 1, got {fractions}")


def stratified_split(
    rows: Sequence[dict],
    *,
    fractions: dict[str, float],
    salt: str,
    text_key: str | Sequence[str] = "text",
    label_key: str | None = "label",
) -> dict[str, list[dict]]:
    """Splits rows into train/dev/test, stratified by label, by hash rank.

    Args:
        rows: examples with a text and a label field.
        fractions: share of each split, e.g. {"train": 0.8, "dev": 0.1, "test": 0.1}.
        salt: changes the assignment; part of the task's identity (bump its version).
        text_key: field (or fields, e.g. a sentence pair) hashed to rank examples.
        label_key: field to stratify by; None (regression, NER) ranks all rows as one stratum.

    Returns:
        A dict split name -> rows, each split in ranked order.
    """
    _check_fractions(fractions)
    strata: dict[object, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        strata[row.get(label_key) if label_key else None].append(i)
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for label in sorted(strata, key=str):
        ranked = sorted(
            strata[label], key=lambda i: _rank_key(salt, _hashed_text(rows[i], text_key), i)
        )
        n = len(ranked)
        n_train = round(n * fractions["train"])
        n_dev = round(n * fractions["dev"])
        out["train"] += [rows[i] for i in ranked[:n_train]]
        out["dev"] += [rows[i] for i in ranked[n_train : n_train + n_dev]]
        out["test"] += [rows[i] for i in ranked[n_train + n_dev :]]
    return out


def grouped_split(
    rows: Sequence[dict], *, fractions: dict[str, float], salt: str, group_key: str
) -> dict[str, list[dict]]:
    """Splits rows so that every group (e.g. a Bible book) lies in exactly one split.

    Near-duplicate examples share a group (the verses of one book share names and phrasing),
    so splitting by group keeps them from leaking between train and test. Groups are ranked by
    SHA-256(salt, group) and dealt out greedily: each group goes to the split that is furthest
    below its target size, relative to that target. Split sizes therefore approximate the
    fractions as closely as whole groups allow.

    Args:
        rows: examples with a ``group_key`` field.
        fractions: share of rows per split; must name train, dev and test and sum to 1.
        salt: changes the assignment; part of the task's identity (bump its version).
        group_key: the field whose values must not cross splits.

    Returns:
        A dict split name -> rows, groups in ranked order, rows in input order within a group.
    """
    _check_fractions(fractions)
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[str(row[group_key])].append(row)
    ranked = sorted(groups, key=lambda g: _rank_key(salt, g, 0))
    targets = {s: fractions[s] * len(rows) for s in SPLITS}
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for group in ranked:
        # Relative shortfall, so small splits get their turn even when large groups come first.
        name = max(SPLITS, key=lambda s: (targets[s] - len(out[s])) / max(targets[s], 1e-9))
        out[name] += groups[group]
    return out


def train_size_count(requested: int | float, available: int) -> int:
    """The number of training examples ``task.train_size`` asks for.

    An int is an absolute count; a float in (0, 1] a fraction of the train split, rounded
    to the nearest count and at least 1. The caller refuses a count above ``available``.
    """
    if isinstance(requested, float):
        return max(1, round(requested * available))
    return int(requested)


def nested_subset(
    rows: Sequence[dict],
    size: int,
    *,
    seed: int,
    salt: str,
    text_key: str | Sequence[str],
    stratum: Callable[[dict], object] | None = None,
) -> list[dict]:
    """``size`` rows of ``rows``, stratified, nested across sizes and fixed per seed.

    Each row is ranked inside its stratum by SHA-256(salt, seed, text); the r-th of a
    stratum of m rows sits at position (r + 0.5) / m on one common scale, and the first
    ``size`` positions are kept. Every prefix thus holds each stratum within one row of its
    share, and the rows kept at one size are a subset of those kept at any larger size
    (same seed). The kept rows stay in their input order.

    Args:
        rows: The train split.
        size: How many to keep (all of them when ``size >= len(rows)``).
        seed: The run's seed: another seed draws another subset.
        salt: The task's split salt (its identity).
        text_key: Field(s) hashed to rank rows, as for the split.
        stratum: Row -> stratum (e.g. its label); None: one stratum (a seeded shuffle).
    """
    if size >= len(rows):
        return list(rows)
    strata: dict[object, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        strata[stratum(row) if stratum else None].append(i)
    seeded = f"{salt}\x00train_size\x00seed={seed}"
    position: dict[int, tuple[float, int]] = {}
    for order, key in enumerate(sorted(strata, key=str)):
        members = strata[key]
        ranked = sorted(
            members, key=lambda i: _rank_key(seeded, _hashed_text(rows[i], text_key), i)
        )
        for r, i in enumerate(ranked):
            position[i] = ((r + 0.5) / len(members), order)
    keep = sorted(sorted(position, key=position.__getitem__)[:size])
    return [rows[i] for i in keep]
