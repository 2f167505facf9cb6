"""`vlmclf attribute`: the vision encoder's and the LLM's effect on fine-grained vs coarse data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vlmclf.commands.common import DEFAULT_STORE, fail, out_dir_for, out_folder, require_store


def attribute_command(
    runs: Annotated[
        list[str] | None,
        typer.Option("--runs", help="The runs of the grid (id or unique prefix; repeat the "
                     "option). Default: every finished run (of --method)."),  # fmt: skip
    ] = None,
    method: Annotated[str | None, typer.Option(help="Only runs of this method.")] = None,
    components: Annotated[
        Path | None,
        typer.Option(help='JSON {"models": {model: {"encoder", "llm"}}, "groups": {dataset: '
                     '"fine"|"coarse"}} (default: each checkpoint\'s config).'),  # fmt: skip
    ] = None,
    rule: Annotated[str, typer.Option(help="Correctness: contain (the paper's) or strict.")] = (
        "contain"
    ),
    n_boot: Annotated[int, typer.Option(min=10, help="Bootstrap replicates.")] = 1000,
    out: Annotated[Path | None, out_folder("Folder for the figure.")] = None,
    store: Annotated[Path, typer.Option(help="The run store.")] = DEFAULT_STORE,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Estimate the encoder effect and the LLM effect per dataset group from model pairs."""
    from vlmclf.analysis.attribute import effect_rows, plot_attribution, run_attribution
    from vlmclf.report.runs import resolve_run_id
    from vlmclf.report.tables import text_table
    from vlmclf.store import RunStore

    require_store(store)
    if rule not in ("contain", "strict"):
        fail(f"--rule must be contain or strict, not {rule!r}")
    with RunStore(store) as db:
        try:
            if runs:
                records = [db.get_run(resolve_run_id(db, run)) for run in runs]
            else:
                records = [r for r in db.list_runs() if r.status == "done"]
            chosen = [r for r in records if r is not None
                      and (method is None or r.spec.get("method") == method)]  # fmt: skip
            if not chosen:
                fail("no runs to compare (see `vlmclf results`)")
            result = run_attribution(db, chosen, components_file=components, rule=rule,
                                     n_boot=n_boot)  # fmt: skip
        except ValueError as err:
            fail(str(err))
    folder = out or out_dir_for("attribute", {"runs": sorted(result["runs"].values())})
    folder.mkdir(parents=True, exist_ok=True)
    figure = plot_attribution(result, folder / "attribute.png")
    if as_json:
        typer.echo(json.dumps({**result, "figure": str(figure)}))
        return
    n_pairs = len({(p["a"], p["b"]) for p in result["pairs"]})
    typer.echo(f"{len(result['models'])} models on {len(result['datasets'])} datasets, "
               f"{n_pairs} single-component pairs")  # fmt: skip
    typer.echo(text_table(effect_rows(result)))
    for sentence in result["verdicts"]:
        typer.echo(f"* {sentence}")
    typer.echo(f"figure: {figure}")
