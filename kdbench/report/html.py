"""One self-contained HTML report: every table as an HTML table, every plot as an embedded PNG, no external files.

A small inline script marks the page: ``data-kdbench-ready`` on <body> once it has loaded (with the number of
images that decoded), and ``data-kdbench-errors`` with the message of any script error, so a headless browser's
DOM dump shows whether the page rendered cleanly.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kdbench.report.figures import KINDS, SavedPlot
from kdbench.report.render import cell_text, is_numeric_column
from kdbench.tracking.atomic import atomic_write

REPORT_NAME = "report.html"
_KIND_HEADINGS = {"top1": "Top-1 with confidence intervals", "paired": "TRG minus each method, per seed",
                  "rho": "Accuracy against imbalance ratio ρ", "groups": "Many / medium / few accuracy",
                  "per_class": "Per-class accuracy against class frequency",
                  "per_class_delta": "Per-class accuracy minus the baseline's", "curves": "Training curves"}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.05em; }
table.kdbench { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1em; }
table.kdbench th, table.kdbench td { border: 1px solid #ddd; padding: 3px 8px; }
table.kdbench th { background: #f3f3f3; } table.kdbench tbody tr:nth-child(even) { background: #fafafa; }
table.kdbench .num { text-align: right; white-space: nowrap; } table.kdbench .text { text-align: left; }
.scroll { overflow-x: auto; } .note { color: #555; font-size: 0.9em; white-space: pre-wrap; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; } nav ul { columns: 2; }
"""

_SCRIPT_HEAD = """
window.addEventListener("error", function (event) {
  var body = document.body || document.documentElement;
  var previous = body.getAttribute("data-kdbench-errors") || "";
  body.setAttribute("data-kdbench-errors", previous + (event.message || "resource failed to load") + ";");
}, true);
"""
_SCRIPT_TAIL = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var decoded = images.filter(function (img) { return img.complete && img.naturalWidth > 0; }).length;
  document.body.setAttribute("data-kdbench-ready", decoded + "/" + images.length + " images");
});
"""


@dataclass(frozen=True)
class HtmlTable:
    """A table of the report: heading, the DataFrame shown (its index is dropped) and a note printed under it.

    Consecutive tables with the same ``section`` sit under one section heading (and one contents entry), each
    under its own smaller heading.
    """

    title: str
    frame: pd.DataFrame
    note: str = ""
    section: str = ""


def anchor(text: str) -> str:
    """An id for an HTML heading from its text."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def _cell_html(value: object) -> str:
    return html.escape(cell_text(value))


def _table_html(table: HtmlTable, ident: str, level: int = 2) -> str:
    frame = table.frame
    align = ['class="num"' if is_numeric_column(frame[c]) else 'class="text"' for c in frame.columns]
    head = "".join(f"<th {a}>{html.escape(str(c))}</th>" for c, a in zip(frame.columns, align, strict=True))
    rows = "\n".join("<tr>" + "".join(f"<td {a}>{_cell_html(v)}</td>" for v, a in zip(row, align, strict=True))
                     + "</tr>" for row in frame.itertuples(index=False))
    body = f'<table class="kdbench">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>'
    note = f'<p class="note">{html.escape(table.note)}</p>' if table.note else ""
    heading = f'<h{level} id="{ident}">{html.escape(table.title)}</h{level}>'
    return f'{heading}\n{note}\n<div class="scroll">{body}</div>'


def _figure_html(plot: SavedPlot) -> str:
    data = base64.b64encode(Path(plot.paths["png"]).read_bytes()).decode("ascii")
    caption = html.escape(plot.caption)
    pdf = plot.paths.get("pdf")
    pdf_note = f" (also {html.escape(Path(pdf).name)})" if pdf else ""
    return (f'<figure id="plot-{anchor(plot.name)}"><img alt="{caption}" src="data:image/png;base64,{data}">'
            f"<figcaption>{caption}{pdf_note}</figcaption></figure>")


def render_html(grid: str, tables: Sequence[HtmlTable], plots: Sequence[SavedPlot], intro: str = "") -> str:
    """The whole report page as one string: contents, the tables, then the plots by kind."""
    sections, contents, used = [], [], set()

    def unique(text: str) -> str:
        ident = anchor(text)
        while ident in used:
            ident += "-x"
        used.add(ident)
        return ident

    section = ""
    for table in tables:
        if table.section and table.section != section:
            ident = unique(table.section)
            contents.append(f'<li><a href="#{ident}">{html.escape(table.section)}</a></li>')
            sections.append(f'<h2 id="{ident}">{html.escape(table.section)}</h2>')
        section = table.section
        ident = unique(table.title)
        if not table.section:
            contents.append(f'<li><a href="#{ident}">{html.escape(table.title)}</a></li>')
        sections.append(_table_html(table, ident, level=3 if table.section else 2))
    for kind in KINDS:
        of_kind = [plot for plot in plots if plot.kind == kind and "png" in plot.paths]
        if not of_kind:
            continue
        ident = f"plots-{anchor(kind)}"
        heading = f"Plots: {_KIND_HEADINGS[kind]}"
        contents.append(f'<li><a href="#{ident}">{html.escape(heading)}</a> ({len(of_kind)})</li>')
        sections.append(f'<h2 id="{ident}">{html.escape(heading)}</h2>\n' + "\n".join(map(_figure_html, of_kind)))
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"kdbench report: {grid}"
    intro_html = f'<p class="note">{html.escape(intro)}</p>' if intro else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
<script>{_SCRIPT_HEAD}</script>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p class="note">Generated {when} from the grid's run records. Top-1 is the final-epoch test accuracy (%).</p>
{intro_html}
<nav><h2 id="contents">Contents</h2><ul>
{chr(10).join(contents)}
</ul></nav>
{chr(10).join(sections)}
<script>{_SCRIPT_TAIL}</script>
</body>
</html>
"""


def write_html(path: str | Path, grid: str, tables: Sequence[HtmlTable], plots: Sequence[SavedPlot],
               intro: str = "") -> Path:
    """Write the report page to ``path`` atomically; returns the path."""
    page = render_html(grid, tables, plots, intro).encode("utf-8")
    atomic_write(path, lambda handle: handle.write(page))
    return Path(path)
