import random

import pytest

from tasks.splits import stratified_split

FRACTIONS = {"train": 0.8, "dev": 0.1, "test": 0.1}


def _rows(n: int = 200) -> list[dict]:
    return [{"text": f"sentence number {i}", "label": i % 2} for i in range(n)]


def test_split_is_independent_of_row_order():
    rows = _rows()
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    a = stratified_split(rows, fractions=FRACTIONS, salt="s")
    b = stratified_split(shuffled, fractions=FRACTIONS, salt="s")
    assert a == b


def test_split_sizes_are_exact_disjoint_and_stratified():
    splits = stratified_split(_rows(), fractions=FRACTIONS, salt="s")
    assert {k: len(v) for k, v in splits.items()} == {"train": 160, "dev": 20, "test": 20}
    texts = [{r["text"] for r in rows} for rows in splits.values()]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    for rows in splits.values():
        assert sum(r["label"] for r in rows) * 2 == len(rows)  # 50/50 as in the corpus


def test_salt_changes_the_assignment():
    a = stratified_split(_rows(), fractions=FRACTIONS, salt="v1")
    b = stratified_split(_rows(), fractions=FRACTIONS, salt="v2")
    assert a["test"] != b["test"]


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_split(_rows(), fractions={"train": 0.9, "dev": 0.1, "test": 0.1}, salt="s")
