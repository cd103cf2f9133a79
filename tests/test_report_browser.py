"""report.html in a real headless browser (Debian's chromium): table, images, screenshot,
and the explorable part: filters, sorting, Plotly charts and their hover boxes.

To learn what the browser shows, the tests load a copy of the page with a small probe
script appended that looks (table rows, image sizes, chart traces), acts (clicks a filter
checkbox, a column header, hovers a chart point) and writes what it saw into an attribute;
``--dump-dom`` then returns it. The page's own state comes from the URL fragment
(``#method=lora,bitfit``), which the probe page is loaded with.

Skipped when chromium is missing, except under ``CI=true`` where a missing browser is a
failure: CI must install it (``.ci/run`` does, from Debian's packages).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from analysis.frame import load_records, quality_runs
from analysis.plots import COST_AXES
from analysis.report import build_report
from analysis.stats import aggregate, pareto_front
from tests.conftest import BuiltReport

FIXTURES = Path(__file__).parent / "fixtures" / "records"
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",  # CI containers run as root, where the sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images].map(i => ({w: i.naturalWidth, h: i.naturalHeight,
                                               done: i.complete, alt: i.alt}));
  const tables = [...document.querySelectorAll("table.comparison")].map(
      t => [...t.querySelectorAll("tbody tr")].map(r => [...r.cells].map(c => c.textContent)));
  document.body.setAttribute("data-probe", JSON.stringify({imgs, tables,
      repro: document.querySelectorAll("#reproducibility tbody tr").length}));
});
</script>"""

pytestmark = [
    pytest.mark.browser,
    pytest.mark.filterwarnings("ignore::analysis.frame.RecordWarning"),
]


@pytest.fixture(scope="module")
def chromium() -> str:
    if Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    reason = f"{CHROMIUM} not found; install Debian's chromium (apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def page(fixture_report: BuiltReport) -> Path:
    (html,) = [p for p in fixture_report.written if p.name == "report.html"]
    return html


def _chromium(binary: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / "profile"  # a fresh profile: no state from other runs or users
    command = [binary, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def without_plotly_js(text: str) -> str:
    """The page minus the inlined plotly.js bundle, whose code holds URL strings (map tile
    attributions, its home page) that it never fetches for scatter charts."""
    start = text.index('<script id="plotly-js">')
    return text[:start] + text[text.index("</script>", start) :]


def test_page_has_no_network_references(page: Path) -> None:
    text = page.read_text()
    own = without_plotly_js(text)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", own)
    assert "http://" not in own and "https://" not in own
    # Every script is inline: no src= on any script tag, no <link> (stylesheets, fonts).
    assert not re.search(r"<script[^>]*\bsrc=", text) and "<link" not in own
    assert [m.group(1) for m in re.finditer(r'<script[^>]*id="([^"]+)"', text)] == [
        "explore-index", "plotly-js", "explore-js"
    ]  # fmt: skip
    assert own.count('src="data:image/png;base64,') == 6  # critical_difference included
    # Size: plotly.js (~4.8 MB) once, the 6 PNGs (~0.5 MB) and a little HTML and JSON.
    assert text.count("plotly.js v") == 1 and len(text.encode()) < 7_000_000


def test_browser_shows_the_table_and_decodes_every_image(
    chromium: str, page: Path, tmp_path: Path
) -> None:
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "\n</body>"))
    done = _chromium(
        chromium, tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()
    )
    assert done.returncode == 0, done.stderr[-2000:]
    match = re.search(r'data-probe="([^"]*)"', done.stdout)
    assert match, f"the probe did not run; DOM starts: {done.stdout[:500]}"
    seen = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))

    (table,) = seen["tables"]
    rows = {row[0]: row for row in table}
    assert sorted(rows) == ["bitfit", "lora", "prompt"]
    assert rows["lora"][1] == "82.0 ± 2.0"  # polarity, the numbers of test_analysis
    assert rows["bitfit"][1] == "80.0 ± 1.4"  # the paired test separates it (test_analysis)
    assert len(seen["imgs"]) == 6
    for img in seen["imgs"]:
        assert img["done"] and img["w"] > 300 and img["h"] > 200, img
    assert seen["repro"] == 13  # one row per reported run


@pytest.mark.slow  # a subprocess path; CI runs it with `pytest -m slow`
def test_screenshot_is_not_blank(chromium: str, page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    done = _chromium(
        chromium, tmp_path, "--window-size=1280,2400", f"--screenshot={shot}", page.as_uri()
    )
    assert done.returncode == 0, done.stderr[-2000:]
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (2400, 1280)
    # A blank or error page is one flat colour; the report has text, a table and plots.
    colours = np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 100
    assert (pixels.mean(axis=2) < 0.9).mean() > 0.02  # some ink on the white page
    print(f"screenshot saved: {shot}")


# ------------------------------------------------------------------- the explorable part

EXPLORE_PROBE = """<script>
(function () {
  const pause = ms => new Promise(r => setTimeout(r, ms));
  function snapshot() {
    const tables = [...document.querySelectorAll("table.comparison")].map(t => ({
      model: t.dataset.model,
      shown: !t.closest("figure").hidden,
      headers: [...t.tHead.rows[0].cells].filter(c => !c.hidden).map(c => c.textContent),
      sorted: [...t.tHead.rows[0].cells].filter(c => c.hasAttribute("aria-sort"))
          .map(c => [c.textContent, c.getAttribute("aria-sort")]),
      rows: [...t.tBodies[0].rows].filter(r => !r.hidden).map(r => r.cells[0].textContent),
    }));
    const charts = {};
    document.querySelectorAll("#explore .js-plotly-plot").forEach(gd => {
      charts[gd.id] = {
        traces: gd.data.map(t => ({meta: t.meta, visible: t.visible !== false,
                                   x: Array.from(t.x), y: Array.from(t.y),
                                   color: t.marker ? t.marker.color : null,
                                   legend: t.showlegend !== false})),
        // What is drawn, not just the data: one path per marker of a shown trace.
        drawn: gd.querySelectorAll(".scatterlayer .trace .points path").length,
      };
    });
    const repro = [...document.querySelectorAll("#reproducibility tbody tr")]
        .filter(r => !r.hidden).map(r => r.cells[0].textContent);
    return {tables, charts, repro, hash: decodeURIComponent(location.hash),
            status: document.getElementById("filter-status").textContent};
  }
  async function run() {
    const out = {onLoad: snapshot()};
    document.querySelector('#filters input[data-facet="task"][value="topic"]').click();
    await pause(100);
    out.afterClick = snapshot();
    const th = [...document.querySelector("table.comparison").tHead.rows[0].cells]
        .find(c => c.textContent.trim() === "Train time (s)");
    th.click(); await pause(50); out.sortAsc = snapshot();
    th.click(); await pause(50); out.sortDesc = snapshot();
    const gd = document.getElementById("chart-score_vs_params");
    const i = gd.data.findIndex(t => t.meta.kind === "point" && t.visible !== false);
    Plotly.Fx.hover(gd, [{curveNumber: i, pointNumber: 0}], gd.data[i].xaxis + gd.data[i].yaxis);
    await pause(100);
    out.hovered = gd.data[i].meta;
    out.hover = [...gd.querySelectorAll(".hovertext")].map(h => h.textContent);
    document.body.setAttribute("data-probe", JSON.stringify(out));
  }
  const start = () => run().catch(e => document.body.setAttribute("data-probe",
      JSON.stringify({error: String(e) + " " + e.stack})));
  if (document.body.getAttribute("data-explore-ready")) start();
  else document.addEventListener("explore-ready", start);
})();
</script>"""


def _explore(chromium: str, page: Path, tmp: Path, fragment: str) -> dict:
    """Loads the page with the explore probe at ``#fragment``; returns what it saw."""
    probe = tmp / "probe.html"
    probe.write_text(page.read_text().replace("</body>", EXPLORE_PROBE + "\n</body>"))
    done = _chromium(
        chromium, tmp, "--virtual-time-budget=20000", "--dump-dom", probe.as_uri() + fragment
    )
    assert done.returncode == 0, done.stderr[-2000:]
    match = re.search(r'data-probe="([^"]*)"', done.stdout)
    assert match, f"the probe did not run; DOM ends: {done.stdout[-500:]}"
    seen = json.loads(html.unescape(match.group(1)))
    assert "error" not in seen, seen
    return seen


def _points(chart: dict, *, task: str | None = None) -> dict[str, dict]:
    return {
        f"{t['meta']['method']}/{t['meta']['task']}": t
        for t in chart["traces"]
        if t["meta"]["kind"] == "point" and task in (None, t["meta"]["task"])
    }


def _frontier(chart: dict, task: str) -> tuple[list[float], list[float]]:
    (front,) = [t for t in chart["traces"] if t["meta"] == {**t["meta"], "kind": "frontier",
                                                             "task": task}]  # fmt: skip
    return front["x"], front["y"]


def test_method_filter_from_the_address_then_a_click_on_a_task_filter(
    chromium: str, page: Path, tmp_path: Path
) -> None:
    seen = _explore(chromium, page, tmp_path, "#method=lora,bitfit")

    load = seen["onLoad"]
    (table,) = load["tables"]
    assert table["rows"] == ["bitfit", "lora"]  # prompt hidden, order kept
    assert load["status"] == "Showing 2 of 3 table rows."
    assert set(load["charts"]) == {f"chart-{s}" for s in ("score_vs_params", "score_vs_memory",
                                                          "score_vs_time")}  # fmt: skip
    for chart in load["charts"].values():
        shown = {k for k, t in _points(chart).items() if t["visible"]}
        assert shown == {"bitfit/polarity", "lora/polarity", "bitfit/topic", "lora/topic"}
        assert chart["drawn"] == 4  # prompt's two points are not drawn
        # One legend entry per row label (and one for the frontier), not one per panel.
        assert sum(t["legend"] for t in chart["traces"]) == 3
    params = load["charts"]["chart-score_vs_params"]
    # The frontier is redrawn over the points shown: without prompt (0.01%, 62.0),
    # polarity's starts at bitfit (0.1%, 80.0) and steps up to lora (0.33%, 82.0).
    assert _frontier(params, "polarity") == ([0.1, 0.33, 0.33], [80, 82, 82])
    # topic: lora (71.0, interval up to 83.7) is off the frontier but reaches it: hollow.
    assert _points(params)["lora/topic"]["color"] == "white"
    assert _points(params)["bitfit/topic"]["color"] != "white"

    # The reproducibility table lists the runs of the rows shown: 5 of 13.
    assert sorted(load["repro"]) == sorted(
        f"{task}--minilm-l6--{m}--s{s}"
        for task, m, seeds in [("polarity", "bitfit", 2), ("polarity", "lora", 3),
                               ("topic", "bitfit", 3), ("topic", "lora", 2)]
        for s in range(seeds)
    )  # fmt: skip

    click = seen["afterClick"]  # unticked task "topic"
    (table,) = click["tables"]
    assert "topic" not in table["headers"] and "polarity" in table["headers"]
    assert table["rows"] == ["bitfit", "lora"]
    assert click["hash"] == "#task=polarity&method=bitfit,lora"
    assert len(click["repro"]) == 5 and all(r.startswith("polarity--") for r in click["repro"])
    for chart in click["charts"].values():
        assert {k for k, t in _points(chart).items() if t["visible"]} == {
            "bitfit/polarity",
            "lora/polarity",
        }
        assert chart["drawn"] == 2
        assert not [t for t in chart["traces"] if t["meta"]["task"] == "topic" and t["visible"]]


def test_header_click_sorts_numerically_and_hover_names_the_runs(
    chromium: str, page: Path, tmp_path: Path
) -> None:
    seen = _explore(chromium, page, tmp_path, "")
    assert seen["onLoad"]["tables"][0]["rows"] == ["bitfit", "lora", "prompt"]
    # Train time 60 (prompt), 90 (bitfit), 120 (lora): as text, "120" would sort first.
    asc, desc = seen["sortAsc"]["tables"][0], seen["sortDesc"]["tables"][0]
    assert asc["rows"] == ["prompt", "bitfit", "lora"]
    assert asc["sorted"] == [["Train time (s)", "ascending"]]
    assert desc["rows"] == ["lora", "bitfit", "prompt"]
    assert desc["sorted"] == [["Train time (s)", "descending"]]
    assert seen["sortDesc"]["hash"] == "#task=polarity&sort=Train time (s)&dir=desc"

    assert seen["hovered"]["method"] == "bitfit" and seen["hovered"]["task"] == "polarity"
    (box,) = seen["hover"]
    for part in (
        "polarity--minilm-l6--bitfit--s0", "polarity--minilm-l6--bitfit--s1",  # run ids
        "recipe: 8e7cd969", "seeds: 2", "accuracy ×100: 80.0, 95% interval [67.3, 92.7]",
        "% params: 0.1", "peak mem: 800.0 MB", "train time: 90.0 s",
    ):  # fmt: skip
        assert part in box, (part, box)


def test_sort_from_the_address_and_the_frontier_of_all_methods(
    chromium: str, page: Path, tmp_path: Path
) -> None:
    seen = _explore(chromium, page, tmp_path, "#sort=Avg.&dir=desc")
    (table,) = seen["onLoad"]["tables"]
    assert table["rows"] == ["bitfit", "lora", "prompt"]  # Avg. 78.5, 76.5, 56.0
    assert table["sorted"] == [["Avg.", "descending"]]
    # With every method shown, the page's frontier is analysis.stats.pareto_front's.
    agg = aggregate(quality_runs(load_records(page.parent.parent)))
    for chart_id, stem in [("chart-score_vs_params", "score_vs_params"),
                           ("chart-score_vs_time", "score_vs_time")]:  # fmt: skip
        chart, axis = seen["onLoad"]["charts"][chart_id], COST_AXES[stem]
        for task in ("polarity", "topic"):
            panel = agg[agg["task"] == task]
            x = panel[axis.column].to_numpy(dtype=float) / axis.divisor
            y = panel["mean"].to_numpy(dtype=float) * 100
            front = pareto_front(x, y)
            order = np.argsort(x[front])
            fx, fy = x[front][order], y[front][order]
            got = _frontier(chart, task)
            np.testing.assert_allclose(got[0], [*fx, x.max()])
            np.testing.assert_allclose(got[1], [*fy, fy[-1]])


@pytest.fixture(scope="module")
def two_model_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture records plus a copy of them on a second model, "tiny-bert"."""
    results = Path(shutil.copytree(FIXTURES, tmp_path_factory.mktemp("models") / "results"))
    for path in sorted(results.glob("*/*--minilm-l6--*.json")):
        record = json.loads(path.read_text())
        record["run_id"] = record["run_id"].replace("minilm-l6", "tiny-bert")
        record["experiment"]["model"] = "tiny-bert"
        path.with_name(path.name.replace("minilm-l6", "tiny-bert")).write_text(json.dumps(record))
    written = build_report(results)
    (page,) = [p for p in written if p.name == "report.html"]
    return page


def test_model_filter_hides_its_table_and_its_chart_panels(
    chromium: str, two_model_page: Path, tmp_path: Path
) -> None:
    seen = _explore(chromium, two_model_page, tmp_path, "#model=tiny-bert")
    load = seen["onLoad"]
    shown = {t["model"]: t["shown"] for t in load["tables"]}
    assert shown == {"minilm-l6": False, "tiny-bert": True}
    assert load["status"] == "Showing 3 of 6 table rows."
    for chart in load["charts"].values():
        models = {t["meta"]["model"] for t in chart["traces"] if t["visible"]}
        assert models == {"tiny-bert"}
        assert chart["drawn"] == 6  # 3 methods x 2 tasks on tiny-bert
    # The click on "topic" then leaves tiny-bert's polarity points only.
    for chart in seen["afterClick"]["charts"].values():
        shown_points = {
            (t["meta"]["model"], t["meta"]["method"], t["meta"]["task"])
            for t in chart["traces"]
            if t["meta"]["kind"] == "point" and t["visible"]
        }
        assert shown_points == {("tiny-bert", m, "polarity") for m in ("bitfit", "lora", "prompt")}
        assert chart["drawn"] == 3
