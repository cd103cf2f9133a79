"""The report's side of collapse (issue 33, point 5): collapsed runs listed with the collapse
rate of their cell, and the median beside the mean where a cell has a collapsed seed."""

from __future__ import annotations

import io
import json
import shutil
import warnings
from pathlib import Path

import pandas as pd

FIXTURES = Path(__file__).parent / "fixtures" / "records"
COLLAPSED_RUN = "polarity--minilm-l6--lora--s2"


def _report(tmp_path: Path, collapse: bool) -> Path:
    from analysis.frame import RecordWarning
    from analysis.report import build_report

    results = Path(shutil.copytree(FIXTURES, tmp_path / "results"))
    if collapse:
        path = results / "2026-11-23_11-00-00" / f"{COLLAPSED_RUN}.json"
        record = json.loads(path.read_text())
        record["quality"] = {
            "collapsed": True,
            "reason": "dev predictions were one class at every evaluation (4 evaluations)",
            "baseline": {"dev": {"metric": "accuracy", "value": 0.5, "prediction": "negative"}},
        }
        path.write_text(json.dumps(record))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordWarning)  # the fixtures hold damaged records
        build_report(results)
    return results / "report"


def test_a_collapsed_seed_is_listed_with_its_cells_rate_and_the_median_is_shown(tmp_path):
    report = _report(tmp_path, collapse=True)
    listed = (report / "collapsed.md").read_text()
    assert "(1 of 1 assessed runs; 1 of " in listed
    assert "| polarity | minilm-l6 | lora | 1 | 3 | 33% |" in listed
    assert f"| {COLLAPSED_RUN} | test accuracy" in listed and "one class at every" in listed
    table = (report / "comparison.md").read_text()
    assert "1 of 3 collapsed)" in table and "(median " in table
    assert "the median is shown beside it" in table
    csv = pd.read_csv(io.StringIO((report / "comparison.csv").read_text()))
    lora = csv[csv["method"] == "lora"].iloc[0]
    assert lora["polarity/n_collapsed"] == 1 and lora["polarity/median"] > 0
    assert csv[csv["method"] == "bitfit"].iloc[0]["polarity/n_collapsed"] == 0


def test_without_collapsed_runs_there_is_no_list_and_no_median(tmp_path):
    report = _report(tmp_path, collapse=False)
    assert not (report / "collapsed.md").exists()
    assert "collapsed" not in (report / "comparison.md").read_text()
