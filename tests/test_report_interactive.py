"""The explorable part of report.html without a browser: self-contained, scripts intact,
hover text and chart data right. The browser side is in tests/test_report_browser.py."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
from plotly.offline import get_plotlyjs

from analysis import interactive
from analysis.frame import load_records, quality_runs
from analysis.interactive import APP_SLOT, PLOTLY_SLOT, chart_points, hover_text, inline_scripts
from analysis.stats import aggregate
from analysis.tables import TaskInfo
from peftbench.records.redact import scrub
from tests.conftest import BuiltReport

FIXTURES = Path(__file__).parent / "fixtures" / "records"
pytestmark = pytest.mark.filterwarnings("ignore::analysis.frame.RecordWarning")


@pytest.fixture(scope="module")
def page(fixture_report: BuiltReport) -> str:
    return (fixture_report.out / "report.html").read_text(encoding="utf-8")


def _script(page: str, script_id: str) -> str:
    match = re.search(rf'<script[^>]*id="{script_id}"[^>]*>(.*?)</script>', page, re.S)
    assert match, script_id
    return match.group(1)


def test_scripts_are_inlined_whole_after_scrubbing(
    page: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Why they are inlined after scrubbing: the name=value rule would corrupt plotly.js.
    assert scrub(get_plotlyjs()) != get_plotlyjs()
    assert _script(page, "plotly-js") == get_plotlyjs()
    app = Path(interactive.__file__).with_name("explore.js").read_text(encoding="utf-8")
    assert _script(page, "explore-js") == app
    assert PLOTLY_SLOT not in page and APP_SLOT not in page


def test_page_is_one_file_of_reasonable_size(page: str) -> None:
    # plotly.js is ~4.8 MB, inlined once; the rest (6 PNGs, tables, chart JSON) ~0.6 MB.
    size = len(page.encode("utf-8"))
    plotly = len(get_plotlyjs().encode("utf-8"))
    assert 4_000_000 < plotly < size < plotly + 1_500_000
    rest = page.replace(get_plotlyjs(), "")
    assert not re.search(r"""<(script|img|link|iframe)[^>]*\b(src|href)=["']?(https?:)?//""", rest)
    assert "https://" not in rest and "http://" not in rest


def test_inline_scripts_needs_each_slot_once() -> None:
    assert inline_scripts("<p>no explore section</p>") == "<p>no explore section</p>"
    with pytest.raises(ValueError, match="expected each once"):
        inline_scripts(f"{PLOTLY_SLOT}{APP_SLOT}{APP_SLOT}")
    with pytest.raises(ValueError, match="expected each once"):
        inline_scripts(PLOTLY_SLOT)


def test_charts_carry_the_table_rows_and_their_runs(page: str) -> None:
    index = json.loads(_script(page, "explore-index"))
    assert index["rows"] == {"minilm-l6": {"bitfit": "bitfit", "lora": "lora", "prompt": "prompt"}}
    assert len(index["runs"]) == 13  # one per reported run, as in the reproducibility table
    assert index["runs"]["topic--minilm-l6--prompt--s0"] == {
        "task": "topic", "model": "minilm-l6", "method": "prompt"
    }  # fmt: skip
    for stem in ("score_vs_params", "score_vs_memory", "score_vs_time"):
        assert f'id="chart-{stem}"' in page
    boxes = re.findall(r'data-facet="(\w+)" value="([^"]+)"', page)
    assert sorted(boxes) == [
        ("method", "bitfit"), ("method", "lora"), ("method", "prompt"),
        ("model", "minilm-l6"), ("task", "polarity"), ("task", "topic"),
    ]  # fmt: skip


def test_chart_points_list_the_runs_of_each_row() -> None:
    runs = quality_runs(load_records(FIXTURES))
    points = chart_points(aggregate(runs), runs).set_index(["task", "method_label"])
    assert points.loc[("polarity", "lora"), "run_ids"] == [
        f"polarity--minilm-l6--lora--s{s}" for s in range(3)
    ]  # the superseded 2026-11-20 record of s1 is not listed twice
    assert points.loc[("topic", "prompt"), "run_ids"] == ["topic--minilm-l6--prompt--s0"]
    assert points.loc[("topic", "prompt"), "recipes"] == ["8e7cd969"]


def _point(**overrides: object) -> pd.Series:
    base = {
        "method_label": "lora", "task": "polarity", "model": "minilm-l6", "mean": 0.8,
        "ci_low": 0.7, "ci_high": 0.9, "ci_method": "t", "n": 3, "trainable_pct": 0.33,
        "peak_mem_bytes": 1.5e9, "train_time_s": 120.0, "recipes": ["8e7cd969"],
        "run_ids": [f"r{i}" for i in range(3)],
    }  # fmt: skip
    return pd.Series({**base, **overrides})


TASK = TaskInfo("polarity", "accuracy", "test", higher_is_better=True, scale=100.0)


def test_hover_text_shows_runs_recipe_seeds_interval_and_costs() -> None:
    text = hover_text(_point(), TASK)
    assert text.split("<br>") == [
        "<b>lora</b> · polarity · minilm-l6",
        "run ids: r0, r1, r2",
        "recipe: 8e7cd969",
        "seeds: 3",
        "accuracy ×100: 80.0, 95% interval [70.0, 90.0] (Student's t)",
        "% params: 0.33",
        "peak mem: 1,500.0 MB",
        "train time: 120.0 s",
    ]


def test_hover_text_one_seed_many_runs_missing_costs_and_markup() -> None:
    text = hover_text(
        _point(
            method_label="lora (lr=<b>)", n=1, ci_low=math.nan, ci_high=math.nan,
            ci_method="none", run_ids=[f"r{i}" for i in range(9)], train_time_s=math.nan,
        ),
        TASK,
    )  # fmt: skip
    assert "<b>lora (lr=&lt;b&gt;)</b>" in text  # record text cannot inject markup
    assert "run ids: r0, r1, r2, r3, r4, r5, … (+3)" in text
    assert "accuracy ×100: 80.0 (1 seed: no interval)" in text
    assert "train time: –" in text


def test_charts_without_the_page_script_have_one_legend_entry_per_label() -> None:
    runs = quality_runs(load_records(FIXTURES))
    fragment = interactive.render_charts(aggregate(runs), runs)
    (params,) = re.findall(
        r'Plotly\.newPlot\(\s*"chart-score_vs_params",\s*(\[.*?\]),\s*\{', fragment
    )
    traces = json.loads(params)
    assert len(traces) == 8  # 3 methods + the frontier, on 2 tasks
    assert sorted(t["name"] for t in traces if t["showlegend"]) == [
        "Pareto frontier", "bitfit", "lora", "prompt"
    ]  # fmt: skip
    hover = {(t["meta"]["method"], t["meta"]["task"]): t["hovertext"][0] for t in traces
             if t["meta"]["kind"] == "point"}  # fmt: skip
    assert "run ids: topic--minilm-l6--prompt--s0" in hover[("prompt", "topic")]
    assert "(1 seed: no interval)" in hover[("prompt", "topic")]
