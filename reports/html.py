"""One self-contained HTML report: inline CSS, tables as HTML fragments, plots as data: URIs, nothing external."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape

from reports.plots import Plot

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1b1b; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
h3 { font-size: 1.05em; margin: 1.4em 0 0.4em; }
.meta, .notes, footer { color: #555; font-size: 0.92em; }
.warnings { background: #fff6e0; border-left: 4px solid #e0a800; padding: 0.5em 1em; }
.warnings li { font-family: ui-monospace, monospace; font-size: 0.9em; word-break: break-all; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.4em 0 1em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d0d0; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f2f2f2; }
caption { caption-side: top; text-align: left; padding: 0.3em 0; max-width: 70em; }
caption small { color: #555; white-space: normal; }
tr.published th, tr.published td { font-style: italic; color: #444; background: #fafafa; }
.published-tag { font-size: 0.75em; font-style: normal; background: #e8e8e8; border-radius: 3px; padding: 0 0.3em; }
sup.not-worse { color: #0a5; font-weight: bold; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
code { font-family: ui-monospace, monospace; }
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def plot_caption(plot: Plot) -> str:
    """A figure's title, plus the sources of its dashed published rows."""
    if not plot.sources:
        return plot.title
    return f"{plot.title}. Dashed grey lines: published rows, not measured here ({'; '.join(plot.sources)})."


def render_html(*, title: str, sources: Sequence[str], n_records: int, warnings: Sequence[str],
                tables: Sequence[str], plots: Sequence[Plot], footer: Sequence[str]) -> str:
    """The whole report page; every plain-text argument is escaped here, table fragments are taken as HTML."""
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{escape(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
             f"<header><h1>{escape(title)}</h1>",
             f'<p class="meta">{n_records} result record{"s" if n_records != 1 else ""} read from '
             + ", ".join(f"<code>{escape(s)}</code>" for s in sources) + ".</p>"]
    if warnings:
        parts.append(f'<div class="warnings"><p>{len(warnings)} warning{"s" if len(warnings) != 1 else ""} '
                     "while reading the records:</p><ul>")
        parts += [f"<li>{escape(w)}</li>" for w in warnings]
        parts.append("</ul></div>")
    parts.append("</header>")
    if tables:
        parts.append('<section id="tables"><h2>Tables</h2>')
        parts += [f'<div class="table-wrap">{fragment}</div>' for fragment in tables]
        parts.append("</section>")
    if plots:
        parts.append('<section id="plots"><h2>Plots</h2>')
        for plot in plots:
            parts.append(f'<figure id="{escape(plot.name)}"><img src="{data_uri(plot.png)}" '
                         f'alt="{escape(plot.alt)}"><figcaption>{escape(plot_caption(plot))}</figcaption></figure>')
        parts.append("</section>")
    parts.append("<footer>" + "".join(f"<p>{escape(line)}</p>" for line in footer) + "</footer>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
