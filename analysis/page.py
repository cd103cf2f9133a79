"""One self-contained HTML page: table, plots and reproducibility section in a single file.

Plots are embedded as base64 PNG data URIs, the CSS is inline and the scripts of the
explorable part (``analysis.interactive``: plotly.js, filters, sorting) are inline too, so
the page opens from a mail attachment or an air-gapped machine with nothing else around
it: no fonts, no network.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from peftbench.records.redact import scrub

PAGE = "report.html"

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       margin: 2em auto; max-width: 1200px; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0; font-variant-numeric: tabular-nums; }
th, td { padding: .3em .6em; border-bottom: 1px solid #e4e4e4; vertical-align: top; }
thead th { border-bottom: 2px solid #444; text-align: left; }
table.comparison td:not(:first-child) { text-align: right; }
table.pairs td:nth-child(n+4) { text-align: center; }
table.repro { font-size: 12px; } table.repro code { word-break: break-all; }
figure { margin: 1.2em 0; } figcaption, .legend, .meta { color: #555; font-size: .92em; }
figure.plot img { max-width: 100%; height: auto; border: 1px solid #eee; }
form.filters { position: sticky; top: 0; z-index: 10; background: #fff; padding: .4em 0;
               border-bottom: 1px solid #ddd; display: flex; flex-wrap: wrap; gap: .6em; }
form.filters fieldset { border: 1px solid #ccc; border-radius: 4px; padding: .2em .6em; }
form.filters legend { font-weight: 600; } form.filters label { margin-right: .8em; }
form.filters p { flex-basis: 100%; margin: 0; }
th.sortable { cursor: pointer; user-select: none; }
th[aria-sort="ascending"]::after { content: " ▲"; }
th[aria-sort="descending"]::after { content: " ▼"; }
figure.chart { margin: 1em 0; border: 1px solid #eee; }
"""


@dataclass(frozen=True)
class Plot:
    """A plot to embed: its PNG file and a caption."""

    png: Path
    caption: str


def render_page(
    *,
    title: str,
    table_html: str,
    plots: list[Plot],
    repro_html: str,
    notes: list[str],
    controls_html: str = "",
    charts_html: str = "",
    pairs_html: str = "",
) -> str:
    """Assembles the page from ready HTML fragments and PNG files.

    Args:
        title: Page title and heading (plain text, escaped here).
        table_html: The comparison tables (``tables.to_html``), already escaped.
        plots: PNG plots to embed, in order.
        repro_html: The reproducibility section (``repro.to_html``), already escaped.
        notes: Plain-text lines shown under the heading (e.g. how many runs were used).
        controls_html: The filter bar (``interactive.render_controls``), above the tables.
        charts_html: The interactive charts (``interactive.render_charts``), after the
            tables; its script slots are filled by ``interactive.inline_scripts`` once the
            page has been scrubbed.
        pairs_html: Which pairs of methods are separated (``pairs.pairs_html``), after the
            tables; empty when no runs stored predictions.

    Returns:
        The HTML document. The text fragments are scrubbed of secrets; the embedded images
        are not, since a chance match inside base64 would corrupt a plot.
    """
    title, table_html, repro_html, notes, controls_html, charts_html, pairs_html = scrub(
        [title, table_html, repro_html, notes, controls_html, charts_html, pairs_html]
    )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = "".join(f'<p class="meta">{html.escape(n)}</p>\n' for n in notes)
    figures = "\n".join(_figure(p) for p in plots)
    document = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
{meta}<p class="meta">Generated {stamp} from the run records by <code>peftbench report</code>.</p>
{controls_html}
<section id="tables">
<h2>Comparison</h2>
{table_html}
</section>
{pairs_html}
{charts_html}
<section id="plots">
<h2>Plots</h2>
{figures}
</section>
{repro_html}
</body>
</html>
"""
    return document


def _figure(plot: Plot) -> str:
    data = base64.b64encode(plot.png.read_bytes()).decode("ascii")
    caption = html.escape(plot.caption)
    return (
        f'<figure class="plot" id="{html.escape(plot.png.stem)}">'
        f'<img src="data:image/png;base64,{data}" alt="{caption}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )
