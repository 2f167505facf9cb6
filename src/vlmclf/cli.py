"""The command line: parse, build a RunSpec, call one function, print. No logic lives here."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

# Our own progress bars say what is happening; transformers' weight-loading bars are noise.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from vlmclf.commands.common import (
    DEFAULT_STORE,
    DEVICE_HELP,
    DTYPE_HELP,
    SEED_MAX,
    CleanErrorsGroup,
    at_least,
    batch_help,
    batch_size_or_auto,
    fail,
    finite_number,
    number_in,
    resolve_batch,
    resolve_hardware,
)
from vlmclf.commands.demo import demo_command
from vlmclf.commands.finetune import finetune_command
from vlmclf.commands.frequency import frequency_command
from vlmclf.commands.organism import organism_app
from vlmclf.commands.probe import probe_command
from vlmclf.commands.rematch import rematch_command
from vlmclf.commands.report import report_command
from vlmclf.commands.reproduce import reproduce_command
from vlmclf.commands.serve import serve_command
from vlmclf.commands.sweep import sweep_command
from vlmclf.commands.wikiqa import wikiqa_app

app = typer.Typer(
    cls=CleanErrorsGroup,
    no_args_is_help=True,
    add_completion=False,
    help="Evaluate vision-language models as image classifiers, side by side with CLIP.",
)
data_app = typer.Typer(no_args_is_help=True, help="Dataset utilities.")
app.add_typer(data_app, name="data")


class MethodName(StrEnum):
    clip = "clip"
    generate = "generate"
    likelihood = "likelihood"
    classifier = "classifier"


class Setting(StrEnum):
    open = "open"
    closed = "closed"


class Order(StrEnum):
    fixed = "fixed"
    random = "random"


class Aggregate(StrEnum):
    sum = "sum"
    mean = "mean"


class Calibration(StrEnum):
    none = "none"
    dataset_mean = "dataset_mean"


class TableFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    parquet = "parquet"


EVAL_CPU_BATCH = 8  # --batch-size auto on CPU and MPS

StoreOpt = Annotated[
    Path, typer.Option("--store", help="SQLite file that keeps every run and prediction.")
]


@app.command("eval")
def eval_command(
    ctx: typer.Context,
    model: Annotated[
        str,
        typer.Option(
            help="hf:<id|path>, random:<family>, organism:vlm|clip, open_clip:<arch>:<weights> "
            "(or open_clip:hf-hub:<id>, open_clip:local-dir:<dir>, then ?tokenizer=DIR...), "
            "openai:|anthropic:|gemini:<model>."
        ),
    ],
    dataset: Annotated[
        str,
        typer.Option(
            help="A manifest .jsonl, or NAME[:split] (imagenet, flowers102, stanford_cars, "
            "caltech101, fashion_mnist, imagefolder)."
        ),
    ],
    method: Annotated[MethodName, typer.Option(help="How to classify.")],
    setting: Annotated[
        Setting, typer.Option(help="open: ask; closed: list the label set in the prompt.")
    ] = Setting.open,
    k: Annotated[
        int | None,
        typer.Option("--k", help="Label-set size for the closed world (default: all classes)."),
    ] = None,
    order: Annotated[Order, typer.Option(help="Order of the offered labels.")] = Order.fixed,
    prompt: Annotated[
        str, typer.Option(help="base, alt1, alt2, alt3, thesis, or the question itself.")
    ] = "base",
    cot: Annotated[bool, typer.Option("--cot", help='Add "Let\'s think step by step."')] = False,
    protocol: Annotated[
        str,
        typer.Option(
            help="clean (ours), paper (the paper's code) or thesis: the defaults of every "
            "option below; options given explicitly still win."
        ),
    ] = "clean",
    prompt_template: Annotated[
        str | None,
        typer.Option(help="Replace the family's prompt format: text with {image} and {question}."),
    ] = None,
    templates: Annotated[
        str, typer.Option(help="CLIP templates: paper, imagenet80, or a JSON file.")
    ] = "paper",
    max_new_tokens: Annotated[
        int | None,
        typer.Option(
            callback=at_least(1), help="Answer length budget (default 32, 256 with --cot)."
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            callback=at_least(1), help="Evaluate a fixed random subset of this many examples."
        ),
    ] = None,
    sample: Annotated[
        str,
        typer.Option(help="How --limit picks: default, or paper (random.seed(1234); shuffle)."),
    ] = "default",
    seed: Annotated[
        int,
        typer.Option(
            callback=number_in(0, SEED_MAX), help="Seed for choice sampling (and random: models)."
        ),
    ] = 0,
    batch_size: Annotated[
        str, typer.Option(callback=batch_size_or_auto, help=batch_help(EVAL_CPU_BATCH))
    ] = "auto",
    workers: Annotated[
        int, typer.Option(callback=at_least(1), help="Threads decoding images ahead of the model.")
    ] = 4,
    split: Annotated[
        str | None, typer.Option(help="Dataset split (default: the layout's test/val split).")
    ] = None,
    data_root: Annotated[str | None, typer.Option(help="Where the dataset lives on disk.")] = None,
    classes: Annotated[
        str | None, typer.Option(help="Class-name list: a shipped name or a JSON/text file.")
    ] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    dtype: Annotated[str, typer.Option(help=DTYPE_HELP)] = "auto",
    device_map: Annotated[
        str | None, typer.Option(help="'auto' to spread a large model over GPUs.")
    ] = None,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Allow a checkpoint's own code to run.")
    ] = False,
    base_url: Annotated[
        str | None, typer.Option(help="API base URL (any OpenAI-compatible server).")
    ] = None,
    concurrency: Annotated[
        int, typer.Option(callback=at_least(1), help="Parallel API requests.")
    ] = 4,
    max_requests: Annotated[
        int | None, typer.Option(callback=at_least(1), help="Stop after this many API requests.")
    ] = None,
    max_cost: Annotated[
        float | None,
        typer.Option(
            callback=number_in(0, low_open=True),
            help="Stop when the estimated API cost (USD) reaches this.",
        ),
    ] = None,
    price_file: Annotated[
        Path | None,
        typer.Option(help='API prices, JSON {"model": {"input": USD/1M, "output": USD/1M}}.'),
    ] = None,
    image_max_side: Annotated[
        int | None,
        typer.Option(
            callback=at_least(1), help="Downscale images sent to APIs to this longest side."
        ),
    ] = None,
    decode_max_pixels: Annotated[
        int | None,
        typer.Option(
            callback=at_least(0),
            help="Decode images with more pixels than this reduced to this many, keeping aspect "
            "(default 4096x4096 = 16777216, above every supported processor's input); "
            "0 decodes at full size. Part of the run id.",
        ),
    ] = None,
    agg: Annotated[
        Aggregate, typer.Option(help="Likelihood: sum or mean of the class-name token log-probs.")
    ] = Aggregate.sum,
    cfg: Annotated[
        float | None,
        typer.Option(
            callback=finite_number,
            help="Likelihood: classifier-free guidance t·logp(c|img) + (1-t)·logp(c).",
        ),
    ] = None,
    calibration: Annotated[
        Calibration,
        typer.Option(help="Likelihood: dataset_mean uses the paper code's prior (needs --cfg)."),
    ] = Calibration.none,
    answer_prefix: Annotated[
        str | None, typer.Option(help="Likelihood: text the answer starts with before the name.")
    ] = None,
    match: Annotated[
        str,
        typer.Option(
            help="How answers map to labels: contain (the paper's), strict, exact, nli, embed."
        ),
    ] = "contain",
    nli_model: Annotated[
        str | None, typer.Option(help="--match nli: hf:<NLI checkpoint> or random:bart_nli.")
    ] = None,
    embed_model: Annotated[
        str | None, typer.Option(help="--match embed: a local sentence-transformers folder.")
    ] = None,
    cfg_sweep: Annotated[
        bool,
        typer.Option("--cfg-sweep", help="Likelihood: choose t on --val-split, report test once."),
    ] = False,
    val_split: Annotated[str, typer.Option(help="Split that --cfg-sweep tunes t on.")] = "train",
    val_limit: Annotated[
        int | None,
        typer.Option(callback=at_least(1), help="Examples of --val-split for --cfg-sweep."),
    ] = 200,
    verify_images: Annotated[
        bool,
        typer.Option("--verify-images", help="Hash image bytes into the run's identity."),
    ] = False,
    retry_failed: Annotated[
        bool,
        typer.Option("--retry-failed", help="Ask again about unreadable inputs too."),
    ] = False,
    store: StoreOpt = DEFAULT_STORE,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of the table.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """Classify a dataset with a model and store every prediction (re-running resumes)."""
    from vlmclf.data.images import decode_settings_for, decoding_with
    from vlmclf.loading import ModelOptions
    from vlmclf.methods import make_method
    from vlmclf.report.summary import summary_json, summary_table
    from vlmclf.runner import RunConfig, run
    from vlmclf.spec import RunSpec

    if k is not None and k < 2:
        fail(f"--k must be at least 2, got {k}")
    if sample not in ("default", "paper"):
        fail(f"--sample must be 'default' or 'paper', got {sample!r}")
    if setting is Setting.closed and method in (MethodName.clip, MethodName.classifier):
        fail(
            "--setting closed is for generative models; for CLIP and classifiers use --k to "
            "restrict the label set"
        )
    name, _, spec_split = (
        dataset.partition(":") if not dataset.endswith(".jsonl") else (dataset, "", "")
    )
    resolved = _protocol_options(ctx, protocol, method, model)
    ctx.with_resource(decoding_with(decode_settings_for(decode_max_pixels)))
    setting, order = Setting(resolved["setting"]), Order(resolved["order"])
    prompt, max_new_tokens = resolved["prompt"], resolved["max_new_tokens"]
    templates, match = resolved["templates"], resolved["match"]
    device, dtype = resolve_hardware(model, device, resolved["dtype"])  # dtype is identity
    answer_prefix, calibration = resolved["answer_prefix"], Calibration(resolved["calibration"])
    sample = resolved["sample"]
    spec = RunSpec(
        model=model,
        dataset=name,
        split=split or spec_split or None,
        method=method.value,
        setting=setting.value,
        prompt=prompt,
        k=k,
        order=order.value,
        seed=seed,
        cot=cot,
        templates=templates,
        options=_likelihood_options(method, agg, cfg, calibration, answer_prefix),
        match=_match_id(method, match, nli_model, embed_model),
        max_new_tokens=max_new_tokens,
        dtype=dtype,
        protocol=protocol,
        prompt_template=resolved["prompt_template"],
    )
    options = ModelOptions(
        device=device,
        dtype=dtype,
        device_map=device_map,
        trust_remote_code=trust_remote_code,
        seed=seed,
        base_url=base_url,
        concurrency=concurrency,
        max_requests=max_requests,
        max_cost_usd=max_cost,
        image_max_side=image_max_side,
        price_file=None if price_file is None else str(price_file),
    )
    config = RunConfig(
        store_path=store,
        data_root=data_root,
        classes=classes,
        limit=limit,
        sample=sample,
        batch_size=resolve_batch(batch_size, device, EVAL_CPU_BATCH),
        workers=workers,
        progress=progress,
        model=options,
        verify_images=verify_images,
        retry_failed=retry_failed,
    )
    if cfg_sweep and method is not MethodName.likelihood:
        fail("--cfg-sweep applies to --method likelihood")
    from vlmclf.models.api import ApiError

    try:
        if cfg_sweep:
            from vlmclf.analysis.sweep.cfg import run_cfg_sweep

            result = run_cfg_sweep(spec, config, val_split=val_split, val_limit=val_limit)
        else:
            result = run(spec, config, make_method)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    except ApiError as err:  # a missing key, a 401, an unknown model, a spent budget
        fail(f"{err} (answers received so far are stored; re-running resumes)", code=1)
    if as_json:
        typer.echo(json.dumps(summary_json(result.run_id, spec, result.summary, str(store))))
    else:
        typer.echo(summary_table(result.run_id, spec, result.summary, str(store)))
    if result.summary.get("n_transient"):
        typer.echo(
            f"incomplete: {result.summary['n_transient']} transient failures; re-run the same "
            "command to retry them (the headline is provisional)",
            err=True,
        )
    if result.summary["n"] > 0 and result.summary["n_failed"] == result.summary["n"]:
        typer.echo("error: every example failed; see `vlmclf export` for the reasons", err=True)
        raise typer.Exit(1)


PROTOCOL_OPTIONS = (
    "setting", "order", "prompt", "cot", "max_new_tokens", "templates", "dtype", "match",
    "answer_prefix", "cfg", "calibration", "prompt_template", "sample",
)  # fmt: skip


def _protocol_options(
    ctx: typer.Context, protocol: str, method: MethodName, model: str
) -> dict[str, object]:
    """The option values after the protocol's defaults: explicit options win."""
    from vlmclf.protocols import resolve_eval

    given = {name: ctx.params[name] for name in PROTOCOL_OPTIONS}
    given = {k: v.value if isinstance(v, StrEnum) else v for k, v in given.items()}
    explicit = {  # typer ships its own click: compare the source by name
        name
        for name in PROTOCOL_OPTIONS
        if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"
    }
    try:
        return resolve_eval(protocol, method.value, model, given, explicit)
    except ValueError as err:
        fail(str(err))


def _match_id(
    method: MethodName, match: str, nli_model: str | None, embed_model: str | None
) -> str:
    """The canonical answer-mapping id (generation only; 'contain' is the paper's rule)."""
    from vlmclf.methods.answer_mapping import match_id

    if match != "contain" and method is not MethodName.generate:
        fail("--match applies to --method generate (other methods score every class)")
    try:
        return match_id(match, nli_model=nli_model, embed_model=embed_model)
    except ValueError as err:
        fail(str(err))


def _likelihood_options(
    method: MethodName,
    agg: Aggregate,
    cfg: float | None,
    calibration: Calibration,
    answer_prefix: str | None,
) -> dict[str, str | float]:
    """Likelihood settings that differ from the defaults (so default runs keep their ids)."""
    if method is not MethodName.likelihood:
        if agg is not Aggregate.sum or cfg is not None or calibration is not Calibration.none:
            fail("--agg, --cfg and --calibration apply to --method likelihood")
        return {}
    chosen = {
        "agg": agg.value if agg is not Aggregate.sum else None,
        "cfg": cfg,
        "calibration": calibration.value if calibration is not Calibration.none else None,
        "answer_prefix": answer_prefix,
    }
    return {key: value for key, value in chosen.items() if value is not None}


@app.command("results")
def results_command(
    store: StoreOpt = DEFAULT_STORE,
    fmt: Annotated[
        TableFormat, typer.Option("--format", help="table, csv or json.")
    ] = TableFormat.table,
) -> None:
    """List stored runs with their metrics."""
    from vlmclf.report.cells import csv_row
    from vlmclf.report.runs import runs_rows

    if not store.exists():
        fail(f"no store at {store} (run `vlmclf eval` first or pass --store)")
    rows = runs_rows(store, with_identity=fmt is TableFormat.json)
    if fmt is TableFormat.json:
        typer.echo(json.dumps(rows, indent=2))
    elif fmt is TableFormat.csv:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["run_id"])
        writer.writeheader()
        writer.writerows(csv_row(row) for row in rows)
        sys.stdout.write(buffer.getvalue())
    else:
        from vlmclf.report.tables import text_table

        typer.echo(text_table(rows) if rows else f"no runs in {store}")


@app.command("export")
def export_command(
    run_id: Annotated[
        str, typer.Argument(help="A run id from `vlmclf results` (a unique prefix is enough).")
    ],
    fmt: Annotated[
        ExportFormat, typer.Option("--format", help="jsonl or parquet.")
    ] = ExportFormat.jsonl,
    out: Annotated[
        Path | None, typer.Option(help="Output file (default: <run_id>.<format>).")
    ] = None,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Write a run's predictions, one row per example."""
    from vlmclf.report.runs import resolve_run_id
    from vlmclf.store import RunStore

    with RunStore(store, read_only=True) as runs:
        try:
            full_id = resolve_run_id(runs, run_id)
        except ValueError as err:
            fail(str(err))
        path = out or Path(f"{full_id}.{fmt.value}")
        count = runs.export(full_id, path, fmt.value)
    typer.echo(f"wrote {count} predictions to {path}")


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


app.command("demo")(demo_command)
app.command("frequency")(frequency_command)
app.command("probe")(probe_command)
app.command("finetune")(finetune_command)
app.command("sweep")(sweep_command)
app.command("rematch")(rematch_command)
app.command("reproduce")(reproduce_command)
app.command("report")(report_command)
app.add_typer(wikiqa_app, name="wikiqa")
app.command("serve")(serve_command)
app.add_typer(organism_app, name="organism")


if __name__ == "__main__":
    app()
