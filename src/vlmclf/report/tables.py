"""Tables as text: aligned columns for the terminal, Markdown, CSV and LaTeX for papers."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from vlmclf.report.cells import csv_cell, csv_row, latex_cell, markdown_cell
from vlmclf.terminal import terminal_safe


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def text_table(rows: Sequence[dict[str, Any]]) -> str:
    """Aligned columns with a header, for the terminal (every cell terminal-safe: model names,
    datasets and class names come from outside)."""
    columns = [terminal_safe(c, one_line=True) for c in rows[0]]
    cells = [[terminal_safe(_cell(row.get(c)), one_line=True) for c in rows[0]] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table; every header and cell escaped (``report.cells.markdown_cell``)."""
    columns = list(rows[0])
    header = "| " + " | ".join(markdown_cell(str(c)) for c in columns) + " |"
    lines = [header, "|" + "|".join("---" for _ in columns) + "|"]
    lines += [
        "| " + " | ".join(markdown_cell(_cell(row.get(c))) for c in columns) + " |" for row in rows
    ]
    return "\n".join(lines)


def csv_table(rows: Sequence[dict[str, Any]]) -> str:
    """CSV with formula-like cells neutralised (``report.cells.csv_cell``)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[csv_cell(str(c)) for c in rows[0]])
    writer.writeheader()
    writer.writerows(csv_row({csv_cell(str(k)): v for k, v in row.items()}) for row in rows)
    return buffer.getvalue()


def latex_table(rows: Sequence[dict[str, Any]]) -> str:
    columns = list(rows[0])
    lines = [r"\begin{tabular}{" + "l" * len(columns) + "}", r"\toprule"]
    lines.append(" & ".join(latex_cell(str(c)) for c in columns) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(latex_cell(_cell(row.get(c))) for c in columns) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)
