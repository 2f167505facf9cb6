"""`vlmclf demo`: the paper's findings, tested on the offline organism in a few minutes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vlmclf.commands.common import (
    DEFAULT_STORE,
    DEVICE_HELP,
    REPORTS_DIR,
    THREADS_HELP,
    at_least,
    batch_help,
    batch_size_or_auto,
    out_folder,
    resolve_batch,
    resolve_hardware,
    use_threads,
)

CPU_BATCH = 16  # --batch-size auto on CPU and MPS


def demo_command(
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="About a third of the images (150 / 60 / 300): a few minutes on a busy 2-core "
            "machine, the same findings with wider intervals. --n-* options still win.",
        ),
    ] = False,
    n_clip: Annotated[
        int | None,
        typer.Option(callback=at_least(1), help="Test images for CLIP [500]."),
    ] = None,
    n_vlm: Annotated[
        int | None,
        typer.Option(callback=at_least(1),
                     help="Test images for each VLM method and the probe [200]."),
    ] = None,
    n_probe_train: Annotated[
        int | None, typer.Option(callback=at_least(1), help="Training images for the probe [1000].")
    ] = None,
    batch_size: Annotated[
        str, typer.Option(callback=batch_size_or_auto, help=batch_help(CPU_BATCH))
    ] = "auto",
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    threads: Annotated[int | None, typer.Option(callback=at_least(1), help=THREADS_HELP)] = None,
    out: Annotated[Path, out_folder("Folder for the report.")] = REPORTS_DIR / "demo",
    store: Annotated[Path, typer.Option(help="The run store.")] = DEFAULT_STORE,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    progress: Annotated[bool, typer.Option(help="Progress bars on stderr.")] = True,
) -> None:
    """The paper's findings on the organism (Fashion-MNIST), each with its 95% interval."""
    from vlmclf.analysis.demo.report import findings_rows
    from vlmclf.analysis.demo.run import QUICK_SIZES, DemoLikelihood, DemoSizes, run_demo
    from vlmclf.paper.protocols import resolve
    from vlmclf.report.tables import text_table
    from vlmclf.run.loading import ModelOptions
    from vlmclf.run.runner import RunConfig

    # the organism's weights are float32: its runs keep their ids on any device
    device, dtype = resolve_hardware("organism:vlm", device, "auto")
    config = RunConfig(
        store_path=store, batch_size=resolve_batch(batch_size, device, CPU_BATCH),
        progress=progress, model=ModelOptions(device=device, dtype=dtype), threads=threads,
    )  # fmt: skip
    use_threads(threads)  # the probe's features too, which are computed outside a run
    base = QUICK_SIZES if quick else DemoSizes()
    sizes = DemoSizes(
        n_clip=n_clip or base.n_clip,
        n_vlm=n_vlm or base.n_vlm,
        n_probe_train=n_probe_train or base.n_probe_train,
    )
    likelihood = DemoLikelihood.from_settings(resolve("paper", "likelihood"))
    result = run_demo(
        sizes, likelihood, config, out, on_step=lambda message: typer.echo(message, err=True)
    )
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
