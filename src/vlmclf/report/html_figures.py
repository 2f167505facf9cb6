"""Figures for the HTML report, as inline ``data:image/png;base64`` URIs (the page needs no
other file and no network), and the stored analyses (probe, sweep, frequency, ...) drawn by
the drawers they registered in ``report.analyses``."""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vlmclf.report.analyses import view_for

MAX_BARS = 40  # per-class bars drawn in full up to this many classes; beyond, worst and best
MAX_LABEL = 40  # characters of a class name on an axis (the tables show it whole)


@contextmanager
def _pyplot() -> Iterator[Any]:
    """pyplot on the Agg backend with mathtext off: a class name or model id holding ``$`` is
    drawn as written instead of failing to parse as TeX."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"text.parse_math": False}):
        yield plt


def png_data_uri(path: Path) -> str:
    """The PNG file as a data URI for an ``<img src>``."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def figure_data_uri(fig: Any) -> str:
    """Save a matplotlib figure to PNG and return it as a data URI."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "figure.png"
        fig.savefig(path, dpi=110)
        return png_data_uri(path)


def bars_to_draw(per_class: Mapping[str, float]) -> tuple[list[tuple[str, float]], bool]:
    """Classes sorted by accuracy (worst first); with more than MAX_BARS classes only the
    MAX_BARS/2 worst and best. The flag says whether classes were left out."""
    ranked = sorted(per_class.items(), key=lambda item: (item[1], item[0]))
    if len(ranked) <= MAX_BARS:
        return ranked, False
    half = MAX_BARS // 2
    return ranked[:half] + ranked[-half:], True


def short_label(name: str) -> str:
    """A class name on one line, cut to MAX_LABEL characters, for an axis tick."""
    flat = " ".join(name.split())
    return flat if len(flat) <= MAX_LABEL else flat[: MAX_LABEL - 1] + "…"


def per_class_figure(per_class: Mapping[str, float], title: str) -> str | None:
    """Horizontal bars of per-class accuracy as a data URI (None when no class has a label)."""
    if not per_class:
        return None
    shown, truncated = bars_to_draw(per_class)
    with _pyplot() as plt:
        fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.22 * len(shown)))
        try:
            names = [short_label(name) for name, _ in shown]
            ax.barh(range(len(shown)), [100 * acc for _, acc in shown], color="#4c72b0")
            ax.set_yticks(range(len(shown)), names, fontsize=7)
            ax.invert_yaxis()
            ax.set_xlim(0, 100)
            ax.set_xlabel("accuracy (%)")
            suffix = f" ({MAX_BARS // 2} worst and best of {len(per_class)})" if truncated else ""
            ax.set_title(title + suffix, fontsize=9)
            fig.tight_layout()
            return figure_data_uri(fig)
        finally:
            plt.close(fig)


# ----- stored analyses ------------------------------------------------------------------------
# The analyses register their drawers and tables (report/analyses.py); the drawers use the
# analysis's own plotting code, so the page shows the same figures as `reports/`.


def analysis_figures(kind: str, result: dict[str, Any]) -> tuple[list[str], str | None]:
    """The analysis's figures as data URIs, and why none could be drawn (None when fine).

    Analyses' result layouts evolve with their code; a result this version cannot draw costs
    its figure, with the reason shown on the page, not the whole report."""
    drawer = view_for(kind).draw
    if drawer is None:
        return [], None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            paths = _draw_as_saved(drawer, result, Path(tmp))
        except Exception as err:  # noqa: BLE001 - see the docstring
            return [], f"figure not drawn: {type(err).__name__}: {err}"
        return [png_data_uri(p) for p in paths if p.exists()], None


def _draw_as_saved(drawer: Any, result: dict[str, Any], folder: Path) -> list[Path]:
    """The figures as the analysis saves them to ``reports/`` (log-axis ticks are TeX); only
    when a label holding ``$`` cannot be parsed as TeX, again with every label plain."""
    import matplotlib

    matplotlib.use("Agg")
    try:
        return drawer(result, folder)
    except ValueError as err:
        if "$" not in str(err) and "mathtext" not in str(err).lower():
            raise
    with _pyplot():
        return drawer(result, folder)


def analysis_table(kind: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The analysis's headline table as rows (empty where the kind has none or cannot be read)."""
    reader = view_for(kind).table
    if reader is None:
        return []
    try:
        return reader(result)
    except (KeyError, TypeError, ValueError, IndexError):
        return []
