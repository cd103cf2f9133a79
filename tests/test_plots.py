"""The score-vs-cost figure: legible with a benchmark's 21 methods in one crowded panel."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Annotation, Text
from matplotlib.ticker import NullFormatter

import analysis.plots as plots


def crowded_agg(n_methods: int = 21) -> pd.DataFrame:
    """One task on which most methods sit within a point of each other at 0.05-3% of the
    parameters, as on the offline benchmark; two wide intervals run past the metric's range."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_methods):
        mean = 0.80 + rng.uniform(-0.005, 0.005) if i > 2 else 0.65 + 0.05 * i
        wide = i in (5, 9)  # a collapsed seed: a t interval reaching below 0 and above 1
        rows.append({
            "task": "polarity", "model": "tiny", "method_label": f"method{i:02d}",
            "method": f"method{i:02d}", "metric": "accuracy", "split": "test",
            "higher_is_better": True, "mean": mean, "n": 5,
            "ci_low": -0.2 if wide else mean - 0.01, "ci_high": 1.3 if wide else mean + 0.01,
            "trainable_pct": 0.01 if i == 0 else float(10 ** rng.uniform(-1.3, 0.5)),
        })  # fmt: skip
    rows[-1]["trainable_pct"] = 100.0  # full fine-tuning: the axis spans four decades
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory):
    """The figure as saved, with its one panel."""
    tmp_path = tmp_path_factory.mktemp("plots")
    figures = []
    save = plots.save_figure
    plots.save_figure = lambda fig, stem: figures.append(fig) or save(fig, stem)
    try:
        written = plots.plot_score_vs_cost(
            crowded_agg(), plots.COST_AXES["score_vs_params"], tmp_path / "svp"
        )
    finally:
        plots.save_figure = save
    assert [p.name for p in written] == ["svp.png", "svp.svg"]
    fig = figures[0]
    return fig, fig.axes[0]


def test_every_method_is_named_once_and_no_two_names_overlap(drawn) -> None:
    fig, ax = drawn
    fig.canvas.draw()  # the names' positions as on screen (the SVG save left them in points)
    renderer = fig.canvas.get_renderer()
    names = [t for t in ax.texts if isinstance(t, Annotation)]
    assert sorted(t.get_text() for t in names) == [f"method{i:02d}" for i in range(21)]
    boxes = [Text.get_window_extent(t, renderer) for t in names]
    for a, b in combinations(boxes, 2):
        assert not a.overlaps(b), "two method names drawn over each other"
    frame = ax.bbox
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 for b in boxes), "a name leaves its panel"
    assert all(frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    # a name moved away from a crowd keeps a line back to its point
    assert any(t.arrow_patch is not None for t in names)


def test_bars_stop_at_the_metric_range_and_decades_alone_are_labelled(drawn) -> None:
    _, ax = drawn
    bar_ends = np.concatenate(
        [seg[:, 1] for c in ax.collections for seg in c.get_segments() if len(seg)]
    )
    assert bar_ends.min() >= 0 and bar_ends.max() <= 100  # accuracy x100: 0-100 attainable
    assert isinstance(ax.xaxis.get_minor_formatter(), NullFormatter)  # 4 decades: no 2s, 5s
    assert ax.get_legend() is None and len(ax.figure.legends) == 1  # one legend, below
