"""`vlmclf demo`: the paper's findings, tested on the offline organism in a few minutes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vlmclf.commands.common import DEFAULT_STORE, REPORTS_DIR, at_least


def demo_command(
    n_clip: Annotated[
        int, typer.Option(callback=at_least(1), help="Test images for CLIP and the probes.")
    ] = 500,
    n_vlm: Annotated[
        int, typer.Option(callback=at_least(1), help="Test images for each VLM method.")
    ] = 200,
    n_probe_train: Annotated[
        int, typer.Option(callback=at_least(1), help="Training images for the probe.")
    ] = 1000,
    batch_size: Annotated[
        int, typer.Option(callback=at_least(1), help="Examples per model call.")
    ] = 16,
    out: Annotated[Path, typer.Option(help="Folder for the report.")] = REPORTS_DIR / "demo",
    store: Annotated[Path, typer.Option(help="The run store.")] = DEFAULT_STORE,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    progress: Annotated[bool, typer.Option(help="Progress bars on stderr.")] = True,
) -> None:
    """The paper's findings on the organism (Fashion-MNIST), each with its 95% interval."""
    from vlmclf.analysis.demo import DemoSizes, findings_rows, run_demo
    from vlmclf.report.tables import text_table
    from vlmclf.runner import RunConfig

    config = RunConfig(store_path=store, batch_size=batch_size, progress=progress)
    sizes = DemoSizes(n_clip=n_clip, n_vlm=n_vlm, n_probe_train=n_probe_train)
    result = run_demo(sizes, config, out, on_step=lambda message: typer.echo(message, err=True))
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo("\nAccuracy on Fashion-MNIST test images (95% bootstrap CI)\n")
    typer.echo(text_table(result["accuracies"]))
    typer.echo("\nThe paper's findings on the organism\n")
    for row in findings_rows(result["findings"]):
        typer.echo(f"({row['#']}) {row['finding of the paper']}: {row['on the organism']}")
        typer.echo(f"    {row['evidence (95% CI)']}")
    typer.echo("")
    for name, path in result["files"].items():
        typer.echo(f"{name}: {path}")
    typer.echo(f"\nOpen the one-page report in a browser: {result['files']['html']}")
