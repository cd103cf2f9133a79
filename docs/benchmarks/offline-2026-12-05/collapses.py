"""How the benchmark's runs collapsed, from their records and predictions:

    python docs/benchmarks/offline-2026-12-05/collapses.py

one row per collapsed run (grid and finals; `quality.collapsed` in its record): its warm-up,
where its training loss peaked, the last logged step whose loss was more than 0.05 from the
constant predictor's (predicting the class prior for every input; a batch of 16 draws its
own mix of classes, so on an unbalanced task this column is noisy), and for the finals the
spread of the predicted class's probability over the test set (a spread near zero: every
input gets the same output, so the representation no longer depends on the input). The
write-up's collapse paragraphs quote this table.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
CONSTANT_GAP = 0.05  # a loss within this of ln k: no better than predicting one class


def collapsed(stage: str) -> list[tuple[Path, dict]]:
    found = []
    for path in sorted((HERE / stage / "records").glob("*__success.json")):
        record = json.loads(path.read_text())
        if (record.get("quality") or {}).get("collapsed"):
            found.append((path, record))
    return found


def constant_loss(record: dict) -> float | None:
    """The cross-entropy of predicting the class prior for every input: for two classes the
    binary entropy of the majority share on dev (hedge is not balanced), else ln k; None for
    tagging (one label per token: all-O's loss is far below ln k)."""
    task = record["config"]["task"]
    if task["kind"] != "classification":
        return None
    k = len(task["labels"])
    baseline = ((record.get("quality") or {}).get("baseline") or {}).get("dev") or {}
    if k == 2 and baseline.get("metric") == "accuracy":
        p = float(baseline["value"])
        return -(p * math.log(p) + (1 - p) * math.log(1 - p))
    return math.log(k)


def test_prob_spread(path: Path) -> str:
    predictions = path.with_name(path.name.replace(".json", ".predictions.parquet"))
    if not predictions.exists():
        return ""
    frame = pd.read_parquet(predictions)
    probs = frame.loc[frame["split"] == "test", "prob"].dropna()
    return f"{probs.max() - probs.min():.1e}" if len(probs) else ""


def row(stage: str, path: Path, record: dict) -> str:
    method, train = record["config"]["method"], record["config"]["train"]
    history = record["history"]
    steps = history[-1]["step"]
    losses = [(h["step"], h["train/loss"]) for h in history if "train/loss" in h]
    peak_step, peak = max(losses, key=lambda s_l: s_l[1])
    constant = constant_loss(record)
    if constant is None:
        off = "n/a"
    else:
        off = max((s for s, loss in losses if abs(loss - constant) > CONSTANT_GAP), default=0)
    cells = [
        stage, record["experiment"]["task"], method["name"], f"x{method['lr_scale']:g}",
        str(record["experiment"]["seed"]), str(math.ceil(float(train["warmup_ratio"]) * steps)),
        f"{peak:.2f} at {peak_step}", str(off), str(steps),
        test_prob_spread(path) if stage == "final" else "",
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def smallest_spreads_of_the_rest(n: int = 3) -> str:
    """The sentence-level finals not flagged as collapsed with the smallest test spreads:
    how far the flag's line is from the runs it lets through."""
    spreads = []
    for path in sorted((HERE / "final" / "records").glob("*__success.json")):
        record = json.loads(path.read_text())
        if record["config"]["task"]["kind"] != "classification":
            continue
        if (record.get("quality") or {}).get("collapsed"):
            continue
        spread = test_prob_spread(path)
        if spread:
            spreads.append((float(spread), record["run_id"]))
    spreads.sort()
    listed = ", ".join(f"{run_id} {spread:.1e}" for spread, run_id in spreads[:n])
    return f"{len(spreads)} sentence-level finals not collapsed; the smallest spreads: {listed}."


def main() -> None:
    print("| stage | task | method | lr | seed | warm-up steps | loss peak (step) "
          "| last step off the constant's loss | steps | test prob spread |")  # fmt: skip
    print("| :-- | :-- | :-- | --: | --: | --: | --: | --: | --: | --: |")
    for stage in ("grid", "final"):
        for path, record in collapsed(stage):
            print(row(stage, path, record))
    print(f"\n{smallest_spreads_of_the_rest()}")


if __name__ == "__main__":
    sys.exit(main())
