"""Which printed number each cell of a ``reproduce`` table stands beside.

Our tables name their rows after the commands that fill them (``<model> (open world)``,
``likelihood sum, top-1``); the paper's file names its cells by table, model and setting. One
function per table of ours translates; a cell it does not translate has no published number.
Our ``table7`` rows (label order, CoT) are rows of the paper's Table 2, our ``table9`` (K labels)
is the paper's Table 7 and our ``figure3`` correlations are its Table 9.
"""

from __future__ import annotations

from collections.abc import Callable

from vlmclf.paper.steps import Context
from vlmclf.report.published import (
    WORDING_ROWS,
    PublishedCell,
    paper_cell,
    paper_model,
    thesis_cell,
    thesis_model,
)

Finder = Callable[[str, str, Context], PublishedCell | None]


def _table1(row: str, column: str, ctx: Context) -> PublishedCell | None:
    for setting in ("open", "closed"):
        if row == f"{ctx.model} ({setting} world)":
            return paper_cell("table1", paper_model(ctx.model), column, setting=setting)
    if ctx.clip_model and row == f"{ctx.clip_model} (zero-shot)":
        return paper_cell("table1", paper_model(ctx.clip_model), column, setting="closed")
    return None


TABLE2_ROWS = {
    "generation, prompt base": "base prompt",
    **{f"generation, prompt {ours}": theirs for ours, theirs in WORDING_ROWS.items()},
    "likelihood sum, top-1": "prob. inference, sum of tokens",
    "likelihood mean, top-1": "prob. inference, mean of tokens",
    # our table7 (closed world ablations): rows of the paper's Table 2
    "closed world, fixed order": "label, fixed order",
    "closed world, random order": "label, random order",
    "closed world, chain of thought": "label, random order + CoT",
}


def _table2_rows(row: str, column: str, ctx: Context) -> PublishedCell | None:
    theirs = TABLE2_ROWS.get(row)
    return paper_cell("table2", paper_model(ctx.model), column, row=theirs) if theirs else None


def _k_labels(row: str, column: str, ctx: Context) -> PublishedCell | None:
    """Rows ``<model> <dataset>``, columns ``K=<k>``: the paper's Table 7."""
    for dataset in ctx.datasets:
        if row.endswith(f" {dataset}") and column.startswith("K="):
            model = paper_model(row[: -len(dataset) - 1])
            return paper_cell("table7", model, dataset, k=int(column[2:]))
    return None


PROBE_FEATURES = {"last_token": "last token", "mean": "average token"}


def _table3(row: str, column: str, ctx: Context) -> PublishedCell | None:
    """``VLM probe, <pooling> (<protocol> protocol)``: Table 3's probing rows; the CLIP probe:
    its linear layer on the frozen encoder (the text's probing figure for CLIP-L)."""
    source, _, rest = row.partition(" probe, ")
    pooling = rest.split(" (")[0]
    if source == "VLM" and pooling in PROBE_FEATURES:
        model = paper_model(ctx.model)
        return paper_cell("table3_probing", model, column, feature=PROBE_FEATURES[pooling])
    if source == "CLIP":
        trainable = "linear layer on the frozen encoder"
        return paper_cell("table3_finetuning", paper_model(ctx.clip_model), column,
                          trainable=trainable)  # fmt: skip
    return None


def _table4(row: str, column: str, ctx: Context) -> PublishedCell | None:
    return paper_cell("table4", paper_model(row), "imagewikiqa")


CORRELATIONS = {"Spearman": "spearman", "Pearson (raw counts)": "pearson"}


def _figure3(row: str, column: str, ctx: Context) -> PublishedCell | None:
    kind = CORRELATIONS.get(row)
    return paper_cell("table9", paper_model(ctx.model), column, correlation=kind) if kind else None


def _thesis(row: str, column: str, ctx: Context) -> PublishedCell | None:
    model, _, ways = row.rpartition(", ")
    if not ways.endswith("-way"):
        return None
    return thesis_cell(thesis_model(model), int(ways.removesuffix("-way")), column.lower())


FINDERS: dict[str, Finder] = {
    "table1": _table1, "table2": _table2_rows, "table3": _table3, "table4": _table4,
    "table7": _table2_rows, "table9": _k_labels, "figure2": _k_labels, "figure3": _figure3,
    "thesis": _thesis,
}  # fmt: skip
"""figure4 (relative error) has none: the paper draws it, and prints no number."""


def published_cell(table: str, row: str, column: str, ctx: Context) -> PublishedCell | None:
    finder = FINDERS.get(table)
    return finder(row, column, ctx) if finder else None


PAPER_TABLES = {
    "table1": ("table1",), "table2": ("table2",), "table3": ("table3_probing", "table3_finetuning"),
    "table4": ("table4",), "table7": ("table2",), "table9": ("table7",), "figure2": ("table7",),
    "figure3": ("table9",),
}  # fmt: skip
"""The paper's tables whose numbers each of our tables reproduces."""
_SELECTORS = ("setting", "row", "k", "feature", "trainable", "correlation")


def published_lines(table: str, ctx: Context) -> list[str]:
    """What the paper prints for the table's models and datasets, one line per row, for the
    command listing (``reproduce TABLE`` without ``--run``)."""
    models = {paper_model(m) for m in (ctx.model, ctx.clip_model) if m} - {None}
    if table == "thesis":
        return _thesis_lines(ctx)
    from vlmclf.report.published import published_numbers

    rows: dict[str, list[str]] = {}
    for cell in published_numbers()["paper"]["cells"]:
        if cell["table"] not in PAPER_TABLES.get(table, ()) or cell["model"] not in models:
            continue
        if cell["dataset"] not in (*ctx.datasets, "imagewikiqa"):
            continue
        is_label_row = str(cell.get("row", "")).startswith("label")
        if cell["table"] == "table2" and is_label_row != (table == "table7"):
            continue
        detail = ", ".join(f"{k}={cell[k]}" for k in _SELECTORS if k in cell)
        key = f"paper {cell['table']}, {cell['model']}" + (f", {detail}" if detail else "")
        value = "N/A" if cell["value"] is None else f"{cell['value']}"
        rows.setdefault(key, []).append(f"{cell['dataset']} {value}")
    return [f"{key}: {'; '.join(values)}" for key, values in rows.items()]


def _thesis_lines(ctx: Context) -> list[str]:
    from vlmclf.report.published import published_numbers

    names = {thesis_model(m) for m in (ctx.model, ctx.clip_model) if m} - {None}
    return [
        f"thesis {c['ways']}-way, {c['model']}: accuracy {c['accuracy']}, precision "
        f"{c['precision']}, recall {c['recall']}, F1 {c['f1']}"
        for c in published_numbers()["thesis"]["cells"] if c["model"] in names
    ]  # fmt: skip
