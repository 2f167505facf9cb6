"""`vlmclf data ...`: dataset utilities."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vlmclf.commands.common import fail, old_out_file, renamed, required

data_app = typer.Typer(no_args_is_help=True, help="Dataset utilities.")


@data_app.command("manifest")
def manifest_command(
    dataset: Annotated[
        str | None,
        typer.Option(
            help="A layout name (see `vlmclf data list`): imagenet, cub200, ..."
        ),
    ] = None,
    data_root: Annotated[Path | None, typer.Option(help="The dataset's folder.")] = None,
    out_file: Annotated[Path | None, typer.Option(help="The manifest to write (.jsonl).")] = None,
    split: Annotated[
        str | None, typer.Option(help="Split to write (default: the layout's default).")
    ] = None,
    layout: Annotated[str | None, typer.Option(hidden=True, help="Old name of --dataset.")] = None,
    root: Annotated[Path | None, typer.Option(hidden=True, help="Old name of --data-root.")] = None,
    out: Annotated[Path | None, old_out_file()] = None,
) -> None:
    """Write a JSONL manifest for a dataset on disk, so a result can be reproduced from it alone."""
    from vlmclf.data import write_manifest

    layout = required("--dataset", renamed("--layout", layout, "--dataset", dataset))
    root = required("--data-root", renamed("--root", root, "--data-root", data_root))
    out = required("--out-file", renamed("--out", out, "--out-file", out_file))
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
