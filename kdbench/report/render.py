"""Render report tables: terminal (markdown pipe tables), CSV (the numbers) and LaTeX (booktabs)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from kdbench.numfmt import format_number
from kdbench.report.tables import Table
from kdbench.tracking.atomic import atomic_write

FORMATS = ("terminal", "csv", "latex")
_NUMBER_LIKE = re.compile(r"[\s\d.,+\-−±†—\[\]()/%pn=]*")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    data = text.encode()
    atomic_write(path, lambda handle: handle.write(data))


def is_numeric_column(column: pd.Series) -> bool:
    """Numbers, or formatted numbers ('57.60 ± 9.10 †', '[34.98, 80.21]', '+8.12 (p=0.008, n=3)', '1/6/3'):
    right-aligned in every format, so that decimal points line up."""
    if pd.api.types.is_numeric_dtype(column):
        return True
    cells = [str(v) for v in column if v is not None and str(v) not in ("", "—", "nan", "<NA>")]
    return bool(cells) and all(_NUMBER_LIKE.fullmatch(cell) for cell in cells)


def cell_text(value: object) -> str:
    """A table cell as text in every format: '—' when missing, a float without binary noise (6 significant
    digits: display frames hold formatted text, so a bare float is a setting such as an lr, never a mean)."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return "—"
    return format_number(value, 6) if isinstance(value, float) else str(value)


def markdown(table: Table) -> str:
    """A markdown pipe table with padded columns, then the notes as a list."""
    frame = table.display
    header = [str(c) for c in frame.columns]
    rows = [[cell_text(v) for v in row] for row in frame.itertuples(index=False)]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    numeric = [is_numeric_column(frame[c]) for c in frame.columns]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2))
                          for w, num in zip(widths, numeric, strict=True)) + "|"
    body = [f"## {table.title}", "", line(header), rule, *(line(r) for r in rows), ""]
    body += [f"- {note}" for note in table.notes]
    return "\n".join(body)


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "Δ": r"$\Delta$", "−": r"$-$", "†": r"$^\dagger$", "—": "--", "→": r"$\to$"}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters (and ±, Δ, †, —) escaped for a tabular cell."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def latex(table: Table) -> str:
    """A booktabs ``table`` environment (needs \\usepackage{booktabs}); notes as a footnote-size paragraph."""
    frame = table.display
    align = "".join("r" if is_numeric_column(frame[c]) else "l" for c in frame.columns)
    lines = [r"\begin{table}[ht]", r"\centering", r"\small", rf"\caption{{{latex_escape(table.title)}}}",
             rf"\label{{tab:kdbench-{table.name.replace('_', '-')}}}", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(latex_escape(str(c)) for c in frame.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(cell_text(v)) for v in row) + r" \\" for row in frame.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.notes:
        lines.append(r"\par\footnotesize " + r" \\ ".join(latex_escape(n) for n in table.notes))
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_table(table: Table, out_dir: str | Path, formats: tuple[str, ...]) -> list[Path]:
    """Write ``table`` as <name>.csv (numbers), <name>.tex and <name>.md into ``out_dir``; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if "csv" in formats:
        path = out / f"{table.name}.csv"
        atomic_write_text(path, table.data.to_csv(index=False))
        written.append(path)
    if "latex" in formats:
        path = out / f"{table.name}.tex"
        atomic_write_text(path, latex(table))
        written.append(path)
    if "terminal" in formats:
        path = out / f"{table.name}.md"
        atomic_write_text(path, markdown(table) + "\n")
        written.append(path)
    return written
