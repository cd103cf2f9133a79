"""report.html in a real headless browser (Debian's chromium): table, images, screenshot.

The page itself has no scripts. To learn whether the browser decoded the embedded plots, the
test loads a copy of the page with a small probe script appended that writes what it sees
(table rows, image sizes) into an attribute; ``--dump-dom`` then returns it.

Skipped when chromium is missing, except under ``CI=true`` where a missing browser is a
failure: CI must install it (``.ci/run`` does, from Debian's packages).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from analysis.report import build_report

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
    pytest.mark.filterwarnings("ignore::analysis.records.RecordWarning"),
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
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = Path(shutil.copytree(FIXTURES, tmp_path_factory.mktemp("browser") / "results"))
    written = build_report(results)
    (html,) = [p for p in written if p.name == "report.html"]
    return html


def _chromium(binary: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / "profile"  # a fresh profile: no state from other runs or users
    command = [binary, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_page_has_no_network_references(page: Path) -> None:
    text = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    assert "<script" not in text
    assert text.count('src="data:image/png;base64,') == 6  # critical_difference included


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
