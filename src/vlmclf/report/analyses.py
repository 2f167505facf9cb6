"""The analyses the report can show, registered by the analyses themselves.

The report sits below the analyses: it never imports one. Each analysis that stores a result
registers how to draw its figures and how to read its headline table when its module is
imported (``vlmclf.analysis.views`` imports them all); the report looks the stored kind up here
and shows a kind nobody registered by its JSON alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Drawer = Callable[[dict[str, Any], Path], list[Path]]
"""Writes the analysis's figures (PNG) into a folder and returns their paths."""
TableReader = Callable[[dict[str, Any]], list[dict[str, Any]]]
"""The analysis's headline table as rows, read from its stored result."""


@dataclass(frozen=True)
class AnalysisView:
    draw: Drawer | None = None
    table: TableReader | None = None


_VIEWS: dict[str, AnalysisView] = {}


def register_analysis(
    kind: str, *, draw: Drawer | None = None, table: TableReader | None = None
) -> None:
    """Say how the report shows stored analyses of ``kind`` (a later call replaces it)."""
    _VIEWS[kind] = AnalysisView(draw, table)


def view_for(kind: str) -> AnalysisView:
    """How ``kind`` is shown; a kind nobody registered has neither figures nor a table."""
    return _VIEWS.get(kind, AnalysisView())


def stored_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The table of an analysis that stores its rows as they are (``result["rows"]``)."""
    rows = result.get("rows")
    return list(rows) if isinstance(rows, list) else []
