"""The README's headline table is version 2's report, not a copy that can drift from it
(docs/benchmarks/offline-2026-12-05/headline.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "docs/benchmarks/offline-2026-12-05/headline.py"


def load():
    spec = importlib.util.spec_from_file_location("headline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_shows_the_table_the_report_gives_today() -> None:
    headline = load()
    text = headline.README.read_text()
    shown = text.split(headline.BEGIN, 1)[1].split(headline.END, 1)[0].strip()
    assert shown == headline.table(), (
        "README's headline table differs from the benchmark's report: run "
        "python docs/benchmarks/offline-2026-12-05/headline.py --update"
    )


def test_marks_follow_the_report_s_tests() -> None:
    table = load().table().splitlines()
    rows = {line.split(" | ")[0].strip("| "): line for line in table[2:]}
    ranks = [float(line.split(" | ")[-3]) for line in table[2:]]
    assert len(rows) == 21 and ranks == sorted(ranks)  # best average rank first
    # wnut16: UniPELT's two collapsed seeds, separated below the best (no dagger)
    assert "6.4 ± 7.0ᶜ |" in rows["unipelt"]
    # the best of a task is bold and carries no dagger
    assert "**98.6 ± 0.0**" in rows["full"] and "**98.6 ± 0.0**†" not in rows["full"]
