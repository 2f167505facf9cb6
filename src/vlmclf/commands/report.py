"""``vlmclf report --store S [--runs ID ...] --out-file report.html``: the runs as one HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlmclf.commands.common import DEFAULT_STORE, fail, old_out_file, renamed

DEFAULT_REPORT = Path("report.html")


def report_command(
    store: Annotated[Path, typer.Option("--store", help="The run store.")] = DEFAULT_STORE,
    runs: Annotated[
        list[str] | None,
        typer.Option("--runs", help="Only these runs (id or unique prefix; repeat the option)."),
    ] = None,
    out_file: Annotated[
        Path | None, typer.Option(help=f"The HTML file to write (default {DEFAULT_REPORT}).")
    ] = None,
    out: Annotated[Path | None, old_out_file()] = None,
) -> None:
    """Write one self-contained HTML page: Table 1, per-class views, figures, run identities."""
    import vlmclf.analysis.views  # noqa: F401 - registers every analysis with the report
    from vlmclf.report.html import write_report
    from vlmclf.store import StoreError

    out = renamed("--out", out, "--out-file", out_file) or DEFAULT_REPORT
    if not store.exists():
        fail(f"--store: no store at {store} (run `vlmclf eval` first or pass --store)")
    try:
        path = write_report(out, store, runs)
    except (ValueError, StoreError) as err:
        fail(str(err))
    except OSError as err:
        fail(f"--out-file {out}: {err.strerror or err}")
    typer.echo(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
