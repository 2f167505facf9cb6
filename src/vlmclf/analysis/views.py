"""How each stored analysis shows in the HTML report: its figures and its headline table.

The report never imports an analysis; this module, on the analyses' side, registers them with
``vlmclf.report.analyses``. Import it before writing a report (``vlmclf report`` and the demo
do). Each drawer writes the analysis's own figures, so the page shows what ``reports/`` shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmclf.analysis.attribute import effect_rows, plot_attribution
from vlmclf.analysis.demo.report import draw_demo, findings_rows
from vlmclf.analysis.errors import error_rows, plot_error_types
from vlmclf.analysis.frequency.stats import plot_frequency_vs_accuracy
from vlmclf.analysis.probe.report import markdown_rows, plot_probe, probe_rows
from vlmclf.analysis.rematch import plot_rematch
from vlmclf.analysis.sweep.report import AXES, write_sweep_report
from vlmclf.report.analyses import register_analysis, stored_rows


def _draw_probe(result: dict[str, Any], folder: Path) -> list[Path]:
    return [plot_probe(result, folder / "probe.png")]


def _probe_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    return markdown_rows(probe_rows(result))


def _draw_sweep(result: dict[str, Any], folder: Path) -> list[Path]:
    files = write_sweep_report(result["rows"], result["axes"], result["n_distinct"], folder)
    return [Path(path) for name, path in files.items() if name.startswith("figure")]


def _sweep_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    keys = ("model", "dataset", *AXES, "accuracy", "ci_low", "ci_high", "n", "run_id")
    return [{key: row.get(key) for key in keys} for row in result["rows"]]


def _draw_frequency(result: dict[str, Any], folder: Path) -> list[Path]:
    if not result.get("bins"):
        return []
    n = (result.get("correlation") or {}).get("n_classes", len(result["bins"]))
    title = f"Class-name frequency vs accuracy ({n} classes)"
    return [plot_frequency_vs_accuracy(result["bins"], folder / "frequency.png", title)]


def _draw_rematch(result: dict[str, Any], folder: Path) -> list[Path]:
    return [plot_rematch(result["rows"], folder / "rematch.png")] if result.get("rows") else []


def _draw_errors(result: dict[str, Any], folder: Path) -> list[Path]:
    return [plot_error_types([result], folder / "errors.png")]


def _draw_attribute(result: dict[str, Any], folder: Path) -> list[Path]:
    return [plot_attribution(result, folder / "attribute.png")]


def _demo_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    return findings_rows(result["findings"])


register_analysis("demo", draw=draw_demo, table=_demo_table)
register_analysis("probe", draw=_draw_probe, table=_probe_table)
register_analysis("sweep", draw=_draw_sweep, table=_sweep_table)
register_analysis("frequency", draw=_draw_frequency)
register_analysis("rematch", draw=_draw_rematch, table=stored_rows)
register_analysis("wikiqa", table=stored_rows)
register_analysis("errors", draw=_draw_errors, table=error_rows)
register_analysis("attribute", draw=_draw_attribute, table=effect_rows)
