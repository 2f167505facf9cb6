"""`vlmclf errors RUN`: each open-world answer typed against a class hierarchy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from vlmclf.commands.common import DEFAULT_STORE, fail, out_dir_for, out_folder, require_store


def errors_command(
    run_id: Annotated[str, typer.Argument(help="A generation run (id or unique prefix).")],
    hierarchy: Annotated[
        Path | None,
        typer.Option(help="JSON object child name -> parent name, or FGVC-Aircraft's data "
                     "folder (default: WordNet 3.0 for ImageNet classes)."),  # fmt: skip
    ] = None,
    similarity: Annotated[
        bool, typer.Option(help="Answer-label similarity with all-MiniLM-L6-v2.")
    ] = True,
    embed_model: Annotated[
        str | None,
        typer.Option(help="A local sentence-transformers folder (default: all-MiniLM-L6-v2)."),
    ] = None,
    out: Annotated[Path | None, out_folder("Folder for the figure.")] = None,
    store: Annotated[Path, typer.Option(help="The run store.")] = DEFAULT_STORE,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Type each answer: exact, coarser, finer, sibling, other_class or no_class."""
    from vlmclf.analysis.errors import error_rows, error_types, hierarchy_for_run, plot_error_types
    from vlmclf.methods.answer_mapping import default_embed_model, load_sentence_encoder
    from vlmclf.report.runs import resolve_run_id
    from vlmclf.report.tables import text_table
    from vlmclf.store import RunStore

    require_store(store)
    with RunStore(store) as runs:
        try:
            full_id = resolve_run_id(runs, run_id)
            record = runs.get_run(full_id)
            assert record is not None
            tree = hierarchy_for_run(record.class_names, hierarchy)
            encoder = None
            if similarity:
                encoder = _sentence_encoder(embed_model, default_embed_model, load_sentence_encoder)
            result = error_types(runs, full_id, tree, encoder=encoder)
        except ValueError as err:
            fail(str(err))
    folder = out or out_dir_for("errors", {"run": full_id, "hierarchy": str(hierarchy)})
    folder.mkdir(parents=True, exist_ok=True)
    figure = plot_error_types([result], folder / "errors.png")
    if as_json:
        typer.echo(json.dumps({**result, "figure": str(figure)}))
        return
    typer.echo(f"run {full_id}: {result['n']} answers typed against {result['hierarchy']}")
    typer.echo(text_table(error_rows(result)))
    parent = result["parent_accuracy"]
    typer.echo(f"accuracy at the parent level: {parent['value']:.3f} "
               f"[{parent['ci'][0]:.3f}, {parent['ci'][1]:.3f}]")  # fmt: skip
    if result["coarser_levels"]:
        levels = ", ".join(f"{k} up: {v}" for k, v in result["coarser_levels"].items())
        typer.echo(f"coarser answers by levels above the class: {levels}")
    if "similarity" in result:
        sim = result["similarity"]
        typer.echo(f"answer-label similarity: mean {sim['mean']:.3f} "
                   f"[{sim['ci'][0]:.3f}, {sim['ci'][1]:.3f}], quartiles "
                   + ", ".join(f"{q:.3f}" for q in sim["quartiles"]))  # fmt: skip
    typer.echo(f"figure: {figure}")


def _sentence_encoder(path: str | None, default: Any, load: Any) -> Any:
    """all-MiniLM-L6-v2 (or ``path``), with an error that says how to do without it."""
    try:
        return load(path or default())
    except ValueError as err:
        raise ValueError(f"{err}; `vlmclf errors --no-similarity` skips the similarity") from err
