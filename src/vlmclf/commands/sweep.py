"""`vlmclf sweep`: accuracy over a grid of prompts, label orders, CoT, K and strategies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from vlmclf.commands.common import (
    DEFAULT_STORE,
    DEVICE_HELP,
    DTYPE_HELP,
    SEED_MAX,
    THREADS_HELP,
    at_least,
    batch_help,
    batch_size_or_auto,
    check_output_dir,
    fail,
    number_in,
    out_dir_for,
    out_folder,
    renamed,
    required,
    resolve_batch,
    resolve_hardware,
    write_stored_run_files,
)
from vlmclf.terminal import terminal_safe

CPU_BATCH = 8  # --batch-size auto on CPU and MPS


def sweep_command(
    dataset: Annotated[
        list[str], typer.Option(help="Dataset (NAME[:split] or manifest .jsonl); repeat for more.")
    ],
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="A model spec (random:llava, hf:...); repeat for more."),
    ] = None,
    models: Annotated[
        str | None, typer.Option(hidden=True, help="Old comma-separated form of --model.")
    ] = None,
    axis: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=V1,V2 with NAME in k, prompt, order, cot, strategy, choices; repeatable."
        ),
    ] = None,
    choice_model: Annotated[
        str | None, typer.Option(help="The CLIP that mines choices=hard-text/hard-image.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(callback=at_least(1), help="A fixed random subset of this size.")
    ] = None,
    seed: Annotated[
        int,
        typer.Option(
            callback=number_in(0, SEED_MAX), help="Seed of the sampled choices (all models)."
        ),
    ] = 0,
    max_new_tokens: Annotated[
        int | None, typer.Option(callback=at_least(1), help="Answer length budget.")
    ] = None,
    data_root: Annotated[str | None, typer.Option(help="Where the dataset lives.")] = None,
    classes: Annotated[str | None, typer.Option(help="Class-name list for the dataset.")] = None,
    batch_size: Annotated[
        str, typer.Option(callback=batch_size_or_auto, help=batch_help(CPU_BATCH))
    ] = "auto",
    workers: Annotated[
        int, typer.Option(callback=at_least(1), help="Threads decoding images.")
    ] = 4,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    dtype: Annotated[str, typer.Option(help=DTYPE_HELP + " Each model its own.")] = "auto",
    out: Annotated[Path | None, out_folder("Folder for the tables and figures.")] = None,
    store: Annotated[Path, typer.Option(help="The run store.")] = DEFAULT_STORE,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    progress: Annotated[bool, typer.Option(help="Progress bars on stderr.")] = True,
    threads: Annotated[
        int | None, typer.Option(callback=at_least(1), help=THREADS_HELP)
    ] = None,
    output_path: Annotated[
        Path | None,
        typer.Option(help="Also write results_<run_id>.json for every cell's run here."),
    ] = None,
    log_samples: Annotated[
        bool,
        typer.Option("--log-samples", help="With --output-path: samples_<run_id>.jsonl too."),
    ] = False,
) -> None:
    """Run every cell of the grid (stored runs are reused), then write tables and figures."""
    from vlmclf.analysis.sweep.run import parse_axes, run_sweep
    from vlmclf.report.tables import text_table
    from vlmclf.run.loading import ModelOptions
    from vlmclf.run.runner import RunConfig

    old_list = None if models is None else [m.strip() for m in models.split(",") if m.strip()]
    model_list = required("--model", renamed("--models", old_list, "--model", model or None))
    try:
        axes = parse_axes(axis or [])
    except ValueError as err:
        fail(str(err))
    spec = {"models": model_list, "datasets": dataset, "axes": axes, "limit": limit, "seed": seed}
    folder = out or out_dir_for("sweep", spec)
    check_output_dir(output_path, log_samples)
    device, dtype = resolve_hardware(None, device, dtype)  # an auto dtype: per model, per cell
    config = RunConfig(
        store_path=store, data_root=data_root, classes=classes, limit=limit,
        batch_size=resolve_batch(batch_size, device, CPU_BATCH), workers=workers,
        progress=progress, threads=threads,
        model=ModelOptions(device=device, dtype=dtype, seed=seed),
    )  # fmt: skip
    echo = (lambda row: None) if as_json else _print_cell
    try:
        result = run_sweep(
            model_list, dataset, axes, config, seed=seed, max_new_tokens=max_new_tokens,
            out_dir=folder, on_cell=echo, choice_model=choice_model,
        )  # fmt: skip
    except ValueError as err:
        fail(str(err))
    if output_path is not None:
        run_ids = [row["run_id"] for row in result["rows"] if row.get("run_id")]
        write_stored_run_files(output_path, store, run_ids, data_root=data_root,
                               classes=classes, log_samples=log_samples)  # fmt: skip
    if as_json:
        typer.echo(json.dumps(result))
    else:
        shown = ["model", "dataset", *result["axes"], "accuracy", "n", "error"]
        typer.echo(text_table([{c: row.get(c) for c in shown} for row in result["rows"]]))
        for name, path in result["files"].items():
            typer.echo(f"{name}: {path}")
    if result["rows"] and all(row["error"] for row in result["rows"]):
        typer.echo("error: every cell of the sweep failed", err=True)
        raise typer.Exit(1)


def _print_cell(row: dict[str, Any]) -> None:
    axes = ("k", "prompt", "order", "cot", "strategy", "choices")
    values = " ".join(f"{k}={row[k]}" for k in axes)
    outcome = f"error: {row['error']}" if row["error"] else f"accuracy {row['accuracy']:.3f}"
    typer.echo(terminal_safe(f"{row['model']} {row['dataset']} {values}: {outcome}"), err=True)
