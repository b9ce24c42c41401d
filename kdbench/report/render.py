"""Render report tables: terminal (markdown pipe tables), CSV (the numbers) and LaTeX (booktabs)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdbench.report.tables import Table
from kdbench.tracking.atomic import atomic_write

FORMATS = ("terminal", "csv", "latex")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    data = text.encode()
    atomic_write(path, lambda handle: handle.write(data))


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "—"
    return "—" if value is pd.NA else str(value)


def markdown(table: Table) -> str:
    """A markdown pipe table with padded columns, then the notes as a list."""
    frame = table.display
    header = [str(c) for c in frame.columns]
    rows = [[_cell(v) for v in row] for row in frame.itertuples(index=False)]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]

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
    align = "".join("r" if pd.api.types.is_numeric_dtype(frame[c]) else "l" for c in frame.columns)
    lines = [r"\begin{table}[ht]", r"\centering", r"\small", rf"\caption{{{latex_escape(table.title)}}}",
             rf"\label{{tab:kdbench-{table.name.replace('_', '-')}}}", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(latex_escape(str(c)) for c in frame.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(_cell(v)) for v in row) + r" \\" for row in frame.itertuples(index=False)]
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
