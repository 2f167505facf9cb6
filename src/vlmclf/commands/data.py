"""`vlmclf data ...`: dataset utilities."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vlmclf.commands.common import fail

data_app = typer.Typer(no_args_is_help=True, help="Dataset utilities.")


@data_app.command("manifest")
def manifest_command(
    layout: Annotated[
        str,
        typer.Option(help="A layout name (see `vlmclf data list`): imagenet, cub200, ..."),
    ],
    root: Annotated[Path, typer.Option(help="The dataset's folder.")],
    out: Annotated[Path, typer.Option(help="The manifest to write (.jsonl).")],
    split: Annotated[
        str | None, typer.Option(help="Split to write (default: the layout's default).")
    ] = None,
) -> None:
    """Write a JSONL manifest for a dataset on disk, so a result can be reproduced from it alone."""
    from vlmclf.data import write_manifest

    try:
        count = write_manifest(layout, str(root), str(out), split=split)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    typer.echo(f"wrote {count} examples to {out}")


@data_app.command("list")
def list_command(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per layout or source.")
    ] = False,
) -> None:
    """Every dataset layout and source: class count, default split, splits, files expected."""
    from vlmclf.data.catalog import catalog_rows, format_catalog

    if as_json:
        for row in catalog_rows():
            typer.echo(json.dumps(row))
    else:
        typer.echo(format_catalog())
