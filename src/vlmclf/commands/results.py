"""`vlmclf results` lists the stored runs with their metrics; `vlmclf export RUN` writes one
run's predictions, a row per example."""

from __future__ import annotations

import csv
import io
import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vlmclf.commands.common import DEFAULT_STORE, fail, old_out_file, renamed, require_store
from vlmclf.terminal import terminal_safe

if TYPE_CHECKING:
    from vlmclf.store import RunStore


class TableFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    parquet = "parquet"


StoreOpt = Annotated[
    Path, typer.Option("--store", help="SQLite file that keeps every run and prediction.")
]


def results_command(
    store: StoreOpt = DEFAULT_STORE,
    fmt: Annotated[
        TableFormat, typer.Option("--format", help="table, csv or json.")
    ] = TableFormat.table,
) -> None:
    """List stored runs with their metrics."""
    from vlmclf.report.cells import csv_row
    from vlmclf.report.runs import runs_rows

    require_store(store)
    rows = runs_rows(store, with_identity=fmt is TableFormat.json)
    if fmt is TableFormat.json:
        typer.echo(json.dumps(rows, indent=2))
    elif fmt is TableFormat.csv:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["run_id"])
        writer.writeheader()
        writer.writerows(csv_row(row) for row in rows)
        sys.stdout.write(buffer.getvalue())
    else:
        from vlmclf.report.tables import text_table

        typer.echo(text_table(rows) if rows else f"no runs in {store}")


def export_command(
    run_id: Annotated[
        str, typer.Argument(help="A run id from `vlmclf results` (a unique prefix is enough).")
    ],
    fmt: Annotated[
        ExportFormat, typer.Option("--format", help="jsonl or parquet.")
    ] = ExportFormat.jsonl,
    out_file: Annotated[
        Path | None, typer.Option(help="Output file (default: <run_id>.<format>; - for stdout).")
    ] = None,
    store: StoreOpt = DEFAULT_STORE,
    out: Annotated[Path | None, old_out_file()] = None,
) -> None:
    """Write a run's predictions, one row per example."""
    from vlmclf.report.runs import resolve_run_id
    from vlmclf.run.results import export_run
    from vlmclf.store import RunStore

    out = renamed("--out", out, "--out-file", out_file)
    with RunStore(store, read_only=True) as runs:
        try:
            full_id = resolve_run_id(runs, run_id)
        except ValueError as err:
            fail(str(err))
        if out is not None and str(out) == "-":
            count = _export_to_stdout(runs, full_id, fmt)
            typer.echo(f"wrote {count} predictions to standard output", err=True)
            return
        path = out or Path(f"{full_id}.{fmt.value}")
        count = export_run(runs, full_id, path, fmt.value, image_sources(runs, full_id))
    typer.echo(f"wrote {count} predictions to {path}")


def _export_to_stdout(runs: RunStore, run_id: str, fmt: ExportFormat) -> int:
    """``--out-file -``: the rows on standard output (the usual convention), for a pipe; binary
    Parquet is not written to a terminal."""
    if fmt is ExportFormat.parquet and sys.stdout.isatty():
        fail("--out-file - with --format parquet writes binary: redirect it to a file or a pipe")
    from vlmclf.run.results import export_run

    sys.stdout.flush()
    sources = image_sources(runs, run_id)
    count = export_run(runs, run_id, sys.stdout.buffer, fmt.value, sources)
    sys.stdout.buffer.flush()
    return count


def image_sources(runs: RunStore, run_id: str) -> dict[str, str] | None:
    """Each example's image path for ``export``, from the dataset listed again where the run
    recorded it; None (the ``image`` column empty) with one warning line when it cannot be."""
    from vlmclf.run.run_files import stored_run_sources

    record = runs.get_run(run_id)
    if record is None:
        return None
    try:
        return stored_run_sources(record.spec, record.meta)
    except (ValueError, OSError, KeyError) as err:
        typer.echo(f"warning: image paths left empty: {terminal_safe(str(err))}", err=True)
        return None
