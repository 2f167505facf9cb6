"""`vlmclf frequency`: how often each class name occurs in training text, and whether it matters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vlmclf.commands.common import (
    DEFAULT_STORE,
    OUTPUT_PATH_HELP,
    check_output_dir,
    fail,
    out_dir_for,
    out_folder,
    renamed,
    write_analysis_output,
)
from vlmclf.terminal import terminal_safe


def frequency_command(
    corpus: Annotated[
        list[Path], typer.Option(help="Training text: .txt, .jsonl, LLaVA .json, .csv (.gz too).")
    ],
    classes: Annotated[str, typer.Option(help="A shipped class list name or a JSON/text file.")],
    run: Annotated[
        str | None, typer.Option(help="Join with this run's per-class accuracy (id or prefix).")
    ] = None,
    field: Annotated[str | None, typer.Option(help="JSONL/CSV field holding the text.")] = None,
    fmt: Annotated[
        str | None, typer.Option("--corpus-format", help="text, jsonl, json, csv, tsv.")
    ] = None,
    old_fmt: Annotated[
        str | None, typer.Option("--format", hidden=True, help="Old name of --corpus-format.")
    ] = None,
    bins: Annotated[
        str,
        typer.Option(
            help="Figure bins: quantile (equal shares), log, or paper (0, 10, ..., "
            "100, 1000, 10000, 100000)."
        ),
    ] = "quantile",
    out: Annotated[Path | None, out_folder("Folder for the table, plot and JSON.")] = None,
    store: Annotated[Path, typer.Option(help="The run store.")] = DEFAULT_STORE,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    output_path: Annotated[Path | None, typer.Option(help=OUTPUT_PATH_HELP)] = None,
) -> None:
    """Count, per class, the text units that mention it; with --run, correlate with accuracy."""
    from vlmclf.analysis.frequency.run import run_frequency_analysis
    from vlmclf.analysis.frequency.stats import BIN_SCHEMES
    from vlmclf.data import load_class_names
    from vlmclf.metrics.columnar import per_class_accuracy_columns
    from vlmclf.report.runs import resolve_run_id
    from vlmclf.run.identity import library_versions
    from vlmclf.store import RunStore

    fmt = renamed("--format", old_fmt, "--corpus-format", fmt)
    if bins not in BIN_SCHEMES:
        fail(f"--bins must be one of {', '.join(BIN_SCHEMES)}, got {bins!r}")
    for path in corpus:
        if not path.exists():
            fail(f"--corpus: no such file {path}")
    check_output_dir(output_path, log_samples=False)
    try:
        class_names = load_class_names(classes)
    except (ValueError, FileNotFoundError) as err:
        fail(f"--classes: {err}")
    accuracy = None
    with RunStore(store) as runs:
        if run is not None:
            try:
                record = runs.get_run(resolve_run_id(runs, run))
            except ValueError as err:
                fail(f"--run: {err}")
            accuracy = per_class_accuracy_columns(
                runs.columns(record.run_id), record.class_names, rule="contain"
            )
        spec = {"corpus": [str(p) for p in corpus], "classes": classes, "run": run, "field": field}
        if bins != "quantile":  # the default is left out, so earlier analyses keep their ids
            spec["bins"] = bins
        folder = out or out_dir_for("frequency", spec)
        try:
            result = run_frequency_analysis(
                corpus,
                class_names,
                folder,
                field=field,
                fmt=fmt,
                per_class_accuracy=accuracy,
                bins_scheme=bins,
            )
        except ValueError as err:
            fail(str(err))
        result["environment"] = library_versions()  # beside it; no torch: no thread count
        result["analysis_id"] = runs.save_analysis("frequency", spec, result)
    # no --protocol: the counting is always the boundary-safe one; only the figure's bins vary
    write_analysis_output(output_path, store, result["analysis_id"], protocol={"bins": bins})
    if as_json:
        typer.echo(json.dumps(result))
        return
    top = sorted(result["counts"].items(), key=lambda kv: -kv[1])[:5]
    typer.echo(
        f"{result['n_units']} text units; most mentioned: "
        + ", ".join(f"{terminal_safe(name, one_line=True)} ({n})" for name, n in top)
    )
    if result["correlation"]:
        c = result["correlation"]
        typer.echo(
            f"per-class accuracy vs frequency over {c['n_classes']} classes: "
            f"Spearman {_coefficient(c['spearman'])} {_ci(c['spearman_ci95'])}, "
            f"Pearson (log 1+count) {_coefficient(c['pearson_log1p'])} "
            f"{_ci(c['pearson_log1p_ci95'])}, "
            f"Pearson (raw counts, the paper's) {_coefficient(c['pearson_raw'])} "
            f"{_ci(c['pearson_raw_ci95'])}"
        )
    for name, path in result["files"].items():
        if path:
            typer.echo(f"{name}: {terminal_safe(path)}")


def _coefficient(value: float | None) -> str:
    """None means the correlation is undefined: every count or every accuracy is the same."""
    return "undefined (constant data)" if value is None else f"{value:.3f}"


def _ci(ci: list[float] | None) -> str:
    return "" if not ci or ci[0] is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"
