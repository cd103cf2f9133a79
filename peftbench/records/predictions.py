"""Per-example predictions of a run: one parquet file beside its record (issue 33).

A score on 300-400 test sentences moves by 2-4 points from test sampling alone; telling two
methods apart needs paired tests over examples (McNemar, a paired bootstrap over seeds and
examples), and those need every example's prediction. ``write_record`` puts them in
``records/<record file stem>.predictions.parquet``; the record names the file and its
sha256 (``predictions`` section); ``peftbench.records.store.load_predictions`` refuses a
file whose hash differs.

Columns:

- ``split``: ``dev`` (at the dev-selected step) or ``test`` (once; absent when the run had
  ``train.evaluate_test=false``);
- ``example_id``: :func:`example_id`, stable across runs and code versions;
- ``gold`` / ``pred``: the label name, the per-word tags joined by one space (NER), the text
  (translation): strings; float64 for regression;
- ``prob``: the probability of the predicted class (classification), else null.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from typing import Any

SUFFIX = ".predictions.parquet"  # beside "<record file stem>.json"

SPLITS = ("dev", "test")
ID_CHARS = 16
COLUMNS = ("split", "example_id", "gold", "pred", "prob")


class PredictionsError(ValueError):
    """A predictions file that cannot be trusted: missing, or not the bytes the record names."""


def input_fields(task: Any) -> list[str]:
    """The row fields a model reads (its input), in the task's own order.

    Classification and regression: ``text_fields``; NER: ``tokens``; translation:
    ``source``. The gold answer is never part of an example's identity.
    """
    kind = getattr(task, "kind", "")
    if kind == "token_classification":
        return ["tokens"]
    if kind == "translation":
        return ["source"]
    return [str(f) for f in task.cfg.text_fields]


def example_id(task_name: str, task_version: int, inputs: dict, repeat: int = 0) -> str:
    """sha256 (first 16 hex) of the canonical JSON of task name, version and input fields.

    Canonical: keys sorted, no whitespace, UTF-8 (``ensure_ascii=False``). ``repeat`` tells
    apart examples of one split whose inputs are identical: the first keeps the plain id,
    the k-th repeat (k >= 1) hashes ``"repeat": k`` too, so ids stay unique within a split
    and still the same from run to run (splits are deterministic per task version).
    """
    payload: dict[str, Any] = {"task": task_name, "task_version": int(task_version)}
    payload["input"] = inputs
    if repeat:
        payload["repeat"] = int(repeat)
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:ID_CHARS]


def example_ids(task: Any, rows: Sequence[dict]) -> list[str]:
    """:func:`example_id` of every row of a split, in split order, repeats numbered."""
    fields = input_fields(task)
    seen: dict[str, int] = {}
    ids = []
    for row in rows:
        inputs = {f: row[f] for f in fields}
        base = example_id(task.name, task.version, inputs)
        repeat = seen.get(base, 0)
        seen[base] = repeat + 1
        ids.append(base if repeat == 0 else example_id(task.name, task.version, inputs, repeat))
    return ids


def eval_order(loader: Any, world_size: int = 1) -> list[int]:
    """The split's row index of each prediction ``train.evaluate`` returns, in its order.

    Evaluation batches are length-sorted (``batching.sorted_batches``); under data
    parallelism rank r gets batches r, r+n, ... and the gather concatenates ranks in order
    (``runner/data_parallel.py``). Predictions carry no index, so it is rebuilt here.
    """
    sampler = loader.batch_sampler
    batches = list(getattr(sampler, "batches", sampler))
    if world_size <= 1:
        return [i for batch in batches for i in batch]
    return [i for rank in range(world_size) for batch in batches[rank::world_size] for i in batch]


def _text(task: Any, value: Any) -> str | float:
    """One gold or predicted value as the file stores it (see the module docstring)."""
    kind = getattr(task, "kind", "")
    if kind == "regression":
        return float(value)
    if kind == "token_classification":
        return " ".join(str(tag) for tag in value)
    if kind == "classification":
        labels = list(task.labels)
        return (
            labels[int(value)]
            if isinstance(value, int) and 0 <= value < len(labels)
            else str(value)
        )
    return str(value)


def split_frame(task: Any, split: str, ids: Sequence[str], order: Sequence[int], outputs: dict):
    """The rows of one split: ``outputs`` is what ``train.evaluate`` filled (preds, refs, probs).

    Raises:
        ValueError: the predictions do not cover the split's rows exactly once.
    """
    import pandas as pd

    preds, refs = outputs["preds"], outputs["refs"]
    probs = outputs.get("probs") or [None] * len(preds)
    if len(preds) != len(order) or sorted(order) != list(range(len(ids))):
        raise ValueError(
            f"{split}: {len(preds)} predictions for {len(ids)} examples; evaluation must "
            "cover every example once"
        )
    regression = getattr(task, "kind", "") == "regression"
    frame = pd.DataFrame(
        {
            "split": split,
            "example_id": [ids[i] for i in order],
            "gold": [_text(task, r) for r in refs],
            "pred": [_text(task, p) for p in preds],
            "prob": pd.array([None if q is None else float(q) for q in probs], dtype="Float64"),
        }
    )
    frame["gold"] = frame["gold"].astype("float64" if regression else str)
    frame["pred"] = frame["pred"].astype("float64" if regression else str)
    frame["prob"] = frame["prob"].astype("float64")
    return frame.sort_values("example_id", kind="stable").reset_index(drop=True)


def to_parquet(frame: Any) -> tuple[bytes, dict[str, int]]:
    """The file's bytes and the example count per split (``dev`` and ``test``, 0 if absent)."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, engine="pyarrow")
    counts = {split: int((frame["split"] == split).sum()) for split in SPLITS}
    return buffer.getvalue(), counts


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: Where ``runner/experiment.py`` hands the table to ``_finish`` (popped before the record
#: is written: it is a DataFrame, not JSON).
TABLE_KEY = "_predictions_table"


def predictions_table(
    task: Any, loaders: dict, dev_outputs: dict | None, test_outputs: dict | None
) -> Any:
    """The run's predictions file as a DataFrame: dev at the selected step, test once.

    None for a synthetic task (its "examples" are generated token ids scored per position:
    no per-example answer to pair) or when nothing was evaluated.
    """
    import pandas as pd

    from peftbench.runner import data_parallel

    if getattr(task, "synthetic", False):
        return None
    frames = []
    for split, outputs in (("dev", dev_outputs), ("test", test_outputs)):
        if outputs is None:
            continue
        ids = example_ids(task, task.splits[split])
        order = eval_order(loaders[split], data_parallel.world_size())
        frames.append(split_frame(task, split, ids, order, outputs))
    return pd.concat(frames, ignore_index=True) if frames else None
