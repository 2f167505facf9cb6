"""Cells that cannot break or inject into the file they are written to.

Class names, model ids and answers come from users and models: a ``|`` or a newline breaks a
Markdown table, ``<script>`` or ``[x](javascript:...)`` injects into a rendered report, and a CSV
cell starting with ``=``, ``+``, ``-`` or ``@`` runs as a formula when the file is opened in a
spreadsheet. Every report writer passes its cells through these functions.
"""

from __future__ import annotations

import math
from typing import Any

_MARKDOWN_ESCAPES = {
    "\\": "\\\\",
    "|": "\\|",
    "[": "\\[",
    "]": "\\]",
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
}
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def markdown_cell(text: str) -> str:
    """Text safe inside a Markdown table cell: pipes, brackets and backslashes escaped, HTML
    special characters as entities, line breaks as ``<br>``."""
    escaped = "".join(_MARKDOWN_ESCAPES.get(char, char) for char in text)
    return escaped.replace("\r\n", "<br>").replace("\n", "<br>").replace("\r", "<br>")


def csv_cell(value: Any) -> Any:
    """A value safe for a CSV cell: a string that a spreadsheet would run as a formula gets a
    leading apostrophe (OWASP's advice); numbers, and strings that are numbers ("-0.5"), stay."""
    if not isinstance(value, str) or not value.startswith(_FORMULA_STARTS):
        return value
    if _is_number(value):
        return value
    return "'" + value


def csv_row(row: dict[str, Any]) -> dict[str, Any]:
    """Every cell of a DictWriter row through ``csv_cell`` (keys are column names we choose)."""
    return {key: csv_cell(value) for key, value in row.items()}


def latex_cell(text: str) -> str:
    """Text safe inside a LaTeX tabular cell: every special character escaped."""
    return "".join(_LATEX_ESCAPES.get(char, char) for char in text).replace("\n", " ")


def _is_number(text: str) -> bool:
    try:
        return not math.isnan(float(text))
    except ValueError:
        return False
