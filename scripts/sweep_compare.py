"""GPU vs CPU: the real-weight sweep's test scores next to the CPU records of the same recipe.

    python scripts/sweep_compare.py --records DIR/records [--out DIR/sweep_compare.md]

The CPU side is the committed table ``docs/reports/offline-sweep-2026-11-23/
all-methods-polarity.md`` (minilm-l6 on polarity, seed 0, ``train.max_steps=200
train.eval_every_steps=100``, CPU fp32), which ``scripts/gpu_check.sh`` re-runs on the GPU in
bf16 with MiniLM's weights carried in bf16. A method agrees when its test accuracy is within
``TOLERANCE`` points: about 1.4 binomial standard errors of a 400-example test set at 75%
(2.2 points), and 2.5 times the largest seed standard deviation of that sweep's seeds-1,2 table
(1.2 points, full fine-tuning). Exit status 1 if a method disagrees, 2 if one has no
success record.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CPU_TABLE = ROOT / "docs" / "reports" / "offline-sweep-2026-11-23" / "all-methods-polarity.md"
TOLERANCE = 3.0  # accuracy points (x100)
RECIPE = [
    "task=polarity",
    "model=minilm-l6",
    "seed=0",
    "train.max_steps=200",
    "train.eval_every_steps=100",
]


def cpu_scores(table: Path = CPU_TABLE) -> dict[str, float]:
    """Method -> polarity test accuracy x100, from the committed Markdown table."""
    scores = {}
    for line in table.read_text().splitlines():
        match = re.match(r"\|\s*([a-z0-9_]+)\s*\|\s*\**([0-9.]+)\**\s*\|", line)
        if match:
            scores[match.group(1)] = float(match.group(2))
    return scores


def gpu_scores(records: Path) -> dict[str, dict]:
    """Method -> the newest successful record's test accuracy x100 and where it ran."""
    found: dict[str, dict] = {}
    for path in sorted(records.glob("*.json")):
        record = json.loads(path.read_text())
        if record.get("status") != "success":
            continue
        method = record["experiment"]["method"]
        if record["created_at"] >= found.get(method, {}).get("created_at", ""):
            found[method] = {
                "created_at": record["created_at"],
                "score": 100 * record["metrics"]["test"]["accuracy"],
                "device": (record.get("env") or {}).get("gpu")
                or (record.get("env") or {}).get("device"),
                "precision": record["config"]["train"]["precision"],
            }
    return found


def compare(records: Path, methods: list[str], table: Path = CPU_TABLE) -> tuple[str, int]:
    """The Markdown comparison and 0 (all agree), 1 (one disagrees) or 2 (one is missing)."""
    cpu, gpu = cpu_scores(table), gpu_scores(records)
    lines = [
        f"Recipe: `python run.py -m method={','.join(methods)} {' '.join(RECIPE)}` "
        "(GPU: bf16 autocast, MiniLM weights carried in bf16; CPU: fp32), "
        f"CPU side from `{table.relative_to(ROOT) if table.is_relative_to(ROOT) else table}`.",
        "",
        f"| method | CPU test acc | GPU test acc | difference | agrees (<= {TOLERANCE:g} points) |",
        "| :-- | --: | --: | --: | :-- |",
    ]
    status = 0
    for method in methods:
        c, g = cpu.get(method), gpu.get(method, {}).get("score")
        if c is None or g is None:
            status = 2
            lines.append(f"| {method} | {c or 'missing'} | {g or 'missing'} | n/a | no |")
            continue
        agrees = abs(g - c) <= TOLERANCE
        status = max(status, int(not agrees))
        lines.append(
            f"| {method} | {c:.1f} | {g:.1f} | {g - c:+.1f} | {'yes' if agrees else 'NO'} |"
        )
    devices = sorted({str(v["device"]) for v in gpu.values()})
    lines += ["", f"GPU records ran on: {', '.join(devices) or 'none'}."]
    return "\n".join(lines) + "\n", status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=Path, required=True)
    parser.add_argument("--methods", default="lora,prefix,adapter")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cpu-table", type=Path, default=CPU_TABLE)
    parser.add_argument(
        "--require", choices=("agree", "present"), default="agree",
        help="present: only check every method has a success record (tiny CPU smoke runs)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    text, status = compare(args.records, args.methods.split(","), args.cpu_table)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0 if status == 1 and args.require == "present" else status


if __name__ == "__main__":
    sys.exit(main())
