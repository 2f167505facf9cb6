"""`vlmclf data ...`: dataset utilities."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlmclf.commands.common import fail

data_app = typer.Typer(no_args_is_help=True, help="Dataset utilities.")


@data_app.command("manifest")
def manifest_command(
    layout: Annotated[
        str,
        typer.Option(
            help="imagenet, flowers102, stanford_cars, caltech101, fashion_mnist, imagefolder."
        ),
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
