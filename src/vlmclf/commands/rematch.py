"""`vlmclf rematch RUN --match nli`: map a generation run's stored answers with another rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vlmclf.commands.common import (
    DEFAULT_STORE,
    DEVICE_HELP,
    fail,
    out_dir_for,
    out_folder,
    require_store,
    resolve_hardware,
    warn_deprecated,
)


def rematch_command(
    run_id: Annotated[str, typer.Argument(help="A generation run (id or unique prefix).")],
    match: Annotated[
        str | None,
        typer.Option(
            help="The rule to map the answers with: contain, strict, exact, nli, zeroshot or "
            "embed. No default: the run was mapped with one rule already (eval's --match, "
            "default contain); say which to compare with it."
        ),
    ] = None,
    nli_model: Annotated[
        str | None,
        typer.Option(help="hf:<NLI checkpoint> (default: hf:facebook/bart-large-mnli)."),
    ] = None,
    embed_model: Annotated[
        str | None,
        typer.Option(help="A local sentence-transformers folder (default: all-MiniLM-L6-v2)."),
    ] = None,
    hypothesis: Annotated[
        str | None,
        typer.Option(
            help="Label template with {} (nli: 'This is a photo of a {}.', "
            "zeroshot: 'This example is {}.')."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    out: Annotated[Path | None, out_folder("Folder for the table and figure.")] = None,
    store: Annotated[Path, typer.Option(help="The run store.")] = DEFAULT_STORE,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Re-map the answers as a new derived run and compare every matcher run so far."""
    from vlmclf.analysis.rematch import rematch
    from vlmclf.report.runs import resolve_run_id
    from vlmclf.report.tables import text_table
    from vlmclf.store import RunStore

    match = _match_or_old_default(match)
    require_store(store)
    device, _ = resolve_hardware(None, device, "auto")
    with RunStore(store) as runs:
        try:
            full_id = resolve_run_id(runs, run_id)
            folder = out or out_dir_for("rematch", {"run": full_id, "match": match})
            result = rematch(
                runs, full_id, match, nli_model=nli_model, embed_model=embed_model,
                hypothesis=hypothesis, out_dir=folder, device=device,
            )  # fmt: skip
        except ValueError as err:
            fail(str(err))
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(
        f"run {result['run_id']} mapped with {result['match']}: derived run "
        f"{result['derived_run_id']} ({result['n_new']} predictions added)"
    )
    columns = ("match", "n", "accuracy", "strict_accuracy", "macro_precision", "macro_recall",
               "macro_f1", "delta_accuracy")  # fmt: skip
    typer.echo(text_table([{c: row[c] for c in columns} for row in result["rows"]]))
    for name, path in result["files"].items():
        typer.echo(f"{name}: {path}")


OLD_DEFAULT_MATCH = "strict"


def _match_or_old_default(match: str | None) -> str:
    """``--match``, or for one release the old default (strict) with a warning: eval's default
    is contain, and one flag name has one default, so rematch now asks for the rule."""
    if match is not None:
        return match
    warn_deprecated(f"rematch without --match maps with {OLD_DEFAULT_MATCH}, a default that goes "
                    f"in the next release: give --match {OLD_DEFAULT_MATCH} (or contain, exact, "
                    "nli, zeroshot, embed)")  # fmt: skip
    return OLD_DEFAULT_MATCH
