"""`vlmclf organism train`: reproduce the organism's shipped projector or CLIP heads."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from vlmclf.commands.common import SEED_MAX, at_least, number_in, out_folder

organism_app = typer.Typer(no_args_is_help=True, help="The offline organism: train its parts.")


class Kind(StrEnum):
    vlm = "vlm"
    clip = "clip"


@organism_app.command("train")
def train_command(
    kind: Annotated[Kind, typer.Argument(help="vlm (the projector) or clip (the LiT heads).")],
    out: Annotated[Path, out_folder("Folder for the weights and training record.")],
    seed: Annotated[
        int,
        typer.Option(
            callback=number_in(0, SEED_MAX), help="Seed for data order and initialisation."
        ),
    ] = 0,
    steps: Annotated[
        int | None, typer.Option(callback=at_least(1), help="Optimiser steps (default: shipped).")
    ] = None,
    freq: Annotated[
        str | None,
        typer.Option(help="Caption class frequencies: zipf, uniform or a JSON {class: weight}."),
    ] = None,
) -> None:
    """Train the organism's projector (LLaVA stage 1) or contrastive heads, as shipped."""
    from vlmclf.organism import train_organism

    record = train_organism(kind.value, out, seed=seed, steps=steps, freq=freq)
    typer.echo(json.dumps({k: record[k] for k in ("command", "seed", "loss") if k in record}))
    typer.echo(f"weights and training record in {out}; evaluate with --model organism:{kind}@{out}")


@organism_app.command("grid")
def grid_command(
    name: Annotated[str, typer.Argument(help="A grid organism, e.g. grid-block2-smollm2w3.")],
    out: Annotated[Path, out_folder("Folder for the weights and training record.")],
) -> None:
    """Train one cell of the encoder-by-LLM grid with the grid's recipe, as shipped."""
    from vlmclf.organism.grid import train_grid_cell
    from vlmclf.organism.load import GRID

    if name not in GRID:
        raise typer.BadParameter(f"unknown grid organism {name!r}; use one of {', '.join(GRID)}")
    record = train_grid_cell(name, out)
    typer.echo(json.dumps({k: record[k] for k in ("command", "seed", "final_loss")}))
    typer.echo(f"weights and training record in {out}; evaluate with --model organism:{name}@{out}")
