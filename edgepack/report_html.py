"""report.html: the report's blocks as one self-contained HTML page with charts.

The page opens offline: the CSS is inline, the charts are inline base64 PNGs,
and nothing is fetched (no scripts, fonts or style sheets). Every string from
the manifest is HTML-escaped. Without matplotlib the page is written without
charts and says so.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from html import escape
from typing import Any

from edgepack.report import Block, Chart, Heading, Items, Para, Table, report_blocks

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #1a202c; max-width: 1100px; margin: 2em auto; padding: 0 1.5em; }
h1 { font-size: 1.6em; border-bottom: 3px solid #2b6cb0; padding-bottom: .2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #cbd5e0; }
h3 { font-size: 1.05em; margin-top: 1.3em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .92em; }
th, td { border: 1px solid #cbd5e0; padding: .25em .55em; text-align: left; vertical-align: top; }
th { background: #edf2f7; }
tr:nth-child(even) td { background: #f7fafc; }
td.id { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: .85em; word-break: break-all;
        max-width: 32em; }
p.warn { background: #fff5f5; border: 2px solid #c53030; color: #742a2a; padding: .6em .8em;
         font-weight: bold; border-radius: 4px; }
p.note { color: #4a5568; font-style: italic; }
figure.chart { margin: 1em 0; }
figure.chart img { max-width: 100%; height: auto; border: 1px solid #e2e8f0; }
nav { font-size: .92em; color: #4a5568; }
footer { margin-top: 3em; color: #718096; font-size: .85em; border-top: 1px solid #e2e8f0; padding-top: .5em; }
@media print { body { max-width: none; } p.warn { break-inside: avoid; } figure.chart { break-inside: avoid; } }
"""


def render_html(manifest: Mapping[str, Any], measurements: Mapping[str, Any] | None = None) -> str:
    """report.html: the content of report.md plus charts, as one page that needs no network.

    Args:
        manifest: The bundle's manifest (deterministic facts).
        measurements: ``report/measurements.json`` (volatile figures), or None.

    Returns:
        The page. Charts are skipped, with a note on the page, when matplotlib is missing.
    """
    from edgepack import charts

    blocks = report_blocks(manifest, measurements)
    missing = charts.available() if any(isinstance(b, Chart) for b in blocks) else None
    title = escape(f"edgepack bundle: {manifest['target']['name']}")
    body = [_html(block, missing, i) for i, block in enumerate(blocks)]
    if missing:
        body.insert(1, f'<p class="note">Charts are not included: {escape(missing)}</p>')
    nav = " | ".join(
        f'<a href="#s{i}">{escape(b.text)}</a>' for i, b in enumerate(blocks) if isinstance(b, Heading) and b.level == 2
    )
    footer = (
        f"Written by edgepack {escape(str(manifest.get('edgepack_version', '?')))} from manifest.json and "
        "report/measurements.json. Self-contained: no network access is needed to view it."
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            '<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{title}</title><style>{CSS}</style></head>",
            "<body>",
            *body[:2],
            f"<nav>{nav}</nav>",
            *body[2:],
            f"<footer>{footer}</footer>",
            "</body>",
            "</html>",
            "",
        ]
    )


def _html(block: Block, missing: str | None, index: int) -> str:
    if isinstance(block, Heading):
        level = min(max(block.level, 1), 6)
        return f'<h{level} id="s{index}">{escape(block.text)}</h{level}>'
    if isinstance(block, Para):
        if block.loud:
            return f'<p class="warn">WARNING: {escape(block.text)}</p>'
        return f"<p>{escape(block.text)}</p>"
    if isinstance(block, Items):
        return "<ul>" + "".join(f"<li>{escape(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Chart):
        return _chart(block, missing)
    raise TypeError(f"unknown report block {block!r}")


def _table(table: Table) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    rows = []
    for row in table.rows:
        cells = "".join(
            f'<td class="id">{escape(c)}</td>' if i == table.long else f"<td>{escape(c)}</td>"
            for i, c in enumerate(row)
        )
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _chart(chart: Chart, missing: str | None) -> str:
    from edgepack import charts

    title = escape(chart.title)
    if missing:
        return f'<p class="note">Chart not drawn ({title}): matplotlib is not installed.</p>'
    try:
        data = charts.png(chart.kind, chart.title, chart.data)
    except Exception as exc:  # a chart must never cost the bundle; the numbers are in the tables above
        return f'<p class="note">Chart not drawn ({title}): {escape(type(exc).__name__)}: {escape(str(exc))}</p>'
    if data is None:
        return f'<p class="note">Chart not drawn ({title}): no data.</p>'
    encoded = base64.b64encode(data).decode("ascii")
    return f'<figure class="chart"><img src="data:image/png;base64,{encoded}" alt="{title}"></figure>'
