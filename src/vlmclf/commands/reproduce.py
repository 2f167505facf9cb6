"""`vlmclf reproduce`: print (or run) the commands behind one of the paper's tables."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from vlmclf.commands.common import fail, old_out_file, renamed

Opt = typer.Option


def reproduce_command(
    table: Annotated[
        str | None,
        typer.Argument(
            help="table1, table2, table3, table4, table7, table9, "
            "figure2, figure3, figure4, thesis."
        ),
    ] = None,
    list_tables: Annotated[bool, Opt("--list", help="List the tables and figures.")] = False,
    model: Annotated[str | None, Opt(help="The VLM: hf:<id|path>, random:, organism:vlm.")] = None,
    data_root: Annotated[
        str | None, Opt(help="Dataset folder (one --dataset) or a folder of <name>/ folders.")
    ] = None,
    dataset: Annotated[
        list[str] | None, Opt(help="Datasets (default the paper's four; repeat the option).")
    ] = None,
    protocol: Annotated[str, Opt(help="paper (default), clean or thesis.")] = "paper",
    clip_model: Annotated[str | None, Opt(help="CLIP baseline rows (e.g. organism:clip).")] = None,
    limit: Annotated[int | None, Opt(help="Examples per run (a small check).")] = None,
    corpus: Annotated[list[str] | None, Opt(help="Figure 3: training text files.")] = None,
    wikiqa_images: Annotated[
        str | None, Opt(help="Table 4: ImageWikiQA's ImageNet validation images.")
    ] = None,
    finetuned_model: Annotated[
        str | None, Opt(help="Table 4: the classification-fine-tuned checkpoint.")
    ] = None,
    device: Annotated[
        str | None, Opt(help="Passed to every command (default: theirs, auto).")
    ] = None,
    dtype: Annotated[
        str | None,
        Opt(help="Passed to every command (overrides the protocol; default: the protocol's)."),
    ] = None,
    store: Annotated[Path | None, Opt("--store", help="The run store for every command.")] = None,
    run: Annotated[bool, Opt("--run", help="Run the commands and write the table.")] = False,
    out_file: Annotated[
        Path | None,
        Opt(help="Where --run writes the table (Markdown; default "
                 "reports/reproduce-TABLE-PROTOCOL.md)."),
    ] = None,
    out: Annotated[Path | None, old_out_file()] = None,
    output_path: Annotated[
        Path | None,
        Opt(help="Passed to every command: each writes its results_<id>.json there."),
    ] = None,
) -> None:
    """Print the exact commands for a table or figure of the paper (or the thesis); with --run,
    run them and write the table in the paper's layout beside its published numbers."""
    from vlmclf.paper.protocols import PROTOCOLS
    from vlmclf.paper.published_cells import published_lines
    from vlmclf.paper.reproduce import (
        TABLES,
        layout,
        run_steps,
        table_by_name,
        with_output_path,
    )
    from vlmclf.paper.steps import PAPER_DATASETS, Context

    out = renamed("--out", out, "--out-file", out_file)
    if list_tables:
        width = max(len(name) for name in TABLES)
        for name, item in TABLES.items():
            typer.echo(f"{name:<{width}}  {item.title}  [{item.layout}]")
        return
    if table is None or model is None:
        fail("give a TABLE and --model (or --list to see the tables)")
    if protocol not in PROTOCOLS:
        fail(f"--protocol: unknown protocol {protocol!r}; accepted: {', '.join(PROTOCOLS)}")
    try:
        item = table_by_name(table)
    except ValueError as err:
        fail(str(err))
    ctx = Context(
        model=model, data_root=data_root, datasets=tuple(dataset or PAPER_DATASETS),
        protocol=protocol, clip_model=clip_model, limit=limit,
        store=str(store) if store else None, device=device, dtype=dtype,
        corpus=tuple(corpus or ()), wikiqa_images=wikiqa_images, finetuned_model=finetuned_model,
    )  # fmt: skip
    if item.protocol:
        ctx = replace(ctx, protocol=item.protocol)
    try:
        steps = item.build(ctx)
    except ValueError as err:  # a protocol without the table's experiments (the thesis: probe)
        fail(str(err))
    if output_path is not None:
        steps = with_output_path(steps, str(output_path))
    if not run:
        typer.echo(f"# {item.name}: {item.title} (protocol {ctx.protocol})")
        for step in steps:
            typer.echo(step.shell() + (f"  # {step.note}" if step.note else ""))
        for note in item.notes:
            typer.echo(f"# note: {note}")
        published = published_lines(item.name, ctx)
        for line in published or ["no published number for these models in this table"]:
            typer.echo(f"# {line}")
        return
    try:
        cells = run_steps(steps, ctx, lambda line: typer.echo(line, err=True))
    except (RuntimeError, ValueError) as err:
        fail(str(err), code=1)
    text = layout(item, cells, ctx)
    path = out or Path("reports") / f"reproduce-{item.name}-{protocol}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    typer.echo(text)
    typer.echo(f"\nwrote {path}")
