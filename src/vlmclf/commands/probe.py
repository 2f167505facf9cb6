"""``vlmclf probe``: train probes on a VLM's hidden states (and a CLIP's image embeddings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from vlmclf.commands.common import (
    DEFAULT_STORE,
    DEVICE_HELP,
    DTYPE_HELP,
    OUTPUT_PATH_HELP,
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
    resolve_batch,
    resolve_hardware,
    use_threads,
    write_analysis_output,
)
from vlmclf.terminal import terminal_safe

if TYPE_CHECKING:
    from vlmclf.analysis.probe.run import ProbeOutcome

CPU_BATCH = 16  # --batch-size auto on CPU and MPS

Opt = typer.Option
DEFAULT_FEATURE_CHUNK = 1024  # analysis.probe.chunks.DEFAULT_CHUNK_EXAMPLES (not imported: torch)


def parse_weight_decays(text: str) -> tuple[float, ...]:
    """``"0,1e-4,1e-3"`` -> (0.0, 0.0001, 0.001), or a clear error."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        fail(f"--weight-decays must be comma-separated numbers, got {text!r}")
    if not values or any(v < 0 for v in values):
        fail(f"--weight-decays must list non-negative numbers, got {text!r}")
    return values


def _protocol_options(ctx: typer.Context, protocol: str, dataset: str) -> dict[str, Any]:
    """The probe options after the protocol's values: explicit options win."""
    from vlmclf.paper.probe_settings import PROBE_OPTIONS, resolve_probe_options

    given = {name: ctx.params[name] for name in PROBE_OPTIONS}
    explicit = {  # typer ships its own click: compare the source by name
        name
        for name in PROBE_OPTIONS
        if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"
    }
    try:
        return resolve_probe_options(protocol, dataset, given, explicit)
    except ValueError as err:
        fail(str(err))


def _clip_baseline_options(
    protocol: str, dataset: str, clip_model: str | None, clip_epochs: int | None
) -> dict[str, Any]:
    """The CLIP baseline's own settings: --clip-epochs, else the protocol's (the paper's code:
    L2-normalised embeddings, 300 epochs, 40 on ImageNet; clean: as the VLM's probe)."""
    from vlmclf.paper.probe_settings import clip_baseline_values

    if clip_model is None:
        return {}
    epochs, normalise = clip_baseline_values(protocol, dataset)
    return {"clip_epochs": clip_epochs or epochs, "clip_l2_normalize": normalise}


def probe_command(
    ctx: typer.Context,
    model: Annotated[str, Opt(help="A VLM with hidden states: hf:, random:, organism:vlm.")],
    dataset: Annotated[
        str, Opt(help="Evaluation data: NAME[:split] (fashion_mnist, imagefolder, ...) or .jsonl.")
    ],
    train_split: Annotated[str, Opt(help="Split the probe is trained on.")] = "train",
    eval_split: Annotated[
        str | None, Opt(help="Split it is scored on (default: the layout's test/val split).")
    ] = None,
    train_dataset: Annotated[
        str | None, Opt(help="Training data if not --dataset (NAME or .jsonl).")
    ] = None,
    data_root: Annotated[str | None, Opt(help="Where the evaluation data lives.")] = None,
    train_data_root: Annotated[
        str | None, Opt(help="Where the training data lives (default --data-root).")
    ] = None,
    classes: Annotated[str | None, Opt(help="Class-name list (shipped name or file).")] = None,
    layer: Annotated[int, Opt(help="Language-model layer (0 = embeddings, -1 = last).")] = -1,
    prompt: Annotated[str, Opt(help="base, alt1, alt2, or the question itself.")] = "base",
    train_limit: Annotated[
        int | None,
        Opt(callback=at_least(1), help="Train on a fixed random subset of this many examples."),
    ] = None,
    limit: Annotated[
        int | None, Opt(callback=at_least(1), help="Score a fixed random subset of this size.")
    ] = None,
    clip_model: Annotated[
        str | None, Opt(help="Also probe this CLIP model's image embeddings (baseline).")
    ] = None,
    clip_epochs: Annotated[
        int | None,
        Opt(callback=at_least(1), help="Epochs of the CLIP baseline (default: the protocol's; "
            "paper: 300, 40 on ImageNet; clean: --epochs)."),
    ] = None,
    epochs: Annotated[
        int, Opt(callback=at_least(1), help="Epochs per probe (paper: 500, 100 on ImageNet).")
    ] = 50,
    lr: Annotated[
        float, Opt(callback=number_in(0, low_open=True), help="Adam learning rate.")
    ] = 1e-3,
    probe_batch_size: Annotated[
        int, Opt(callback=at_least(1), help="Probe training batch size.")
    ] = 512,
    weight_decays: Annotated[
        str, Opt(help="Clean protocol's weight-decay grid, comma-separated.")
    ] = "1e-4,1e-3,1e-2,1e-1,1",
    val_fraction: Annotated[
        float,
        Opt(
            callback=number_in(0, 1, low_open=True),
            help="Clean protocol: share of train held out for validation.",
        ),
    ] = 0.2,
    mlp: Annotated[
        int | None,
        Opt("--mlp", callback=at_least(1), help="Hidden width of a one-hidden-layer MLP probe."),
    ] = None,
    seed: Annotated[
        int,
        Opt(callback=number_in(0, SEED_MAX), help="Seed of the probes and the validation split."),
    ] = 0,
    protocol: Annotated[
        str, Opt(help="clean (default) or paper: sets the options below unless given.")
    ] = "clean",
    standardize: Annotated[
        bool,
        Opt("--standardize/--raw-features", help="Standardise features (paper: raw features)."),
    ] = True,
    shuffle: Annotated[
        str, Opt(help="each-epoch, or once: one order for all epochs (the paper's code).")
    ] = "each-epoch",
    shuffle_seed: Annotated[
        int,
        Opt(callback=number_in(0, SEED_MAX), help="Seed of the one shuffle (--shuffle once)."),
    ] = 1234,
    reported: Annotated[
        str,
        Opt(help="The headline result: validation (clean) or best-test-epoch (the paper's)."),
    ] = "validation",
    batch_size: Annotated[
        str, Opt(callback=batch_size_or_auto, help=batch_help(CPU_BATCH, "Images per model call"))
    ] = "auto",
    workers: Annotated[
        int, Opt(callback=at_least(1), help="Threads decoding images ahead of the model.")
    ] = 4,
    threads: Annotated[int | None, Opt(callback=at_least(1), help=THREADS_HELP)] = None,
    feature_chunk: Annotated[
        int,
        Opt(callback=at_least(1), help="Examples per resumable feature chunk on disk."),
    ] = DEFAULT_FEATURE_CHUNK,
    cache_dir: Annotated[
        Path | None, Opt(help="Feature cache (default $VLMCLF_CACHE_DIR/features).")
    ] = None,
    device: Annotated[str, Opt(help=DEVICE_HELP)] = "auto",
    dtype: Annotated[str, Opt(help=DTYPE_HELP)] = "auto",
    store: Annotated[Path, Opt("--store", help="The run and analysis store.")] = DEFAULT_STORE,
    out: Annotated[Path | None, out_folder("Folder for the table and figure.")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print one JSON object.")] = False,
    progress: Annotated[bool, Opt(help="Show progress bars on stderr.")] = True,
    output_path: Annotated[Path | None, Opt(help=OUTPUT_PATH_HELP)] = None,
    log_samples: Annotated[
        bool,
        Opt("--log-samples", help="With --output-path: samples_<id>.jsonl, one line per "
            "evaluated example and probe (image, label, features, protocol, prediction, hit)."),
    ] = False,
) -> None:
    """Probe a VLM's hidden states: the paper's protocol and a clean one, both reported."""
    from vlmclf.analysis.probe.run import ProbeConfig, ProbeRequest, ProbeRuntime, run_probe
    from vlmclf.paper.probe_settings import probe_prompt
    from vlmclf.run.loading import ModelOptions

    o = _protocol_options(ctx, protocol, dataset)
    check_output_dir(output_path, log_samples)
    try:
        config = ProbeConfig(
            epochs=o["epochs"], lr=o["lr"], batch_size=o["probe_batch_size"],
            val_fraction=o["val_fraction"], weight_decays=parse_weight_decays(o["weight_decays"]),
            mlp_hidden=mlp, seed=seed, standardize=o["standardize"], shuffle=o["shuffle"],
            shuffle_seed=o["shuffle_seed"], reported=o["reported"],
        )  # fmt: skip
    except ValueError as err:
        fail(str(err))
    device, dtype = resolve_hardware(model, device, o["dtype"])  # dtype keys the features
    template, positions = probe_prompt(protocol, model)
    request = ProbeRequest(
        model=model, dataset=dataset, train_split=train_split, eval_split=eval_split,
        train_dataset=train_dataset, data_root=data_root, train_data_root=train_data_root,
        classes=classes, layer=o["layer"], prompt=o["prompt"], train_limit=train_limit,
        limit=limit, clip_model=clip_model, config=config, protocol=protocol, dtype=dtype,
        prompt_template=template, positions=positions,
        **_clip_baseline_options(protocol, dataset, clip_model, clip_epochs),
    )  # fmt: skip
    runtime = ProbeRuntime(
        store_path=store, out_dir=out or out_dir_for("probe", request.spec()), cache_dir=cache_dir,
        batch_size=resolve_batch(batch_size, device, CPU_BATCH), workers=workers,
        chunk_size=feature_chunk, progress=progress,
        model_options=ModelOptions(device=device, dtype=dtype, seed=seed),
    )  # fmt: skip
    try:
        use_threads(threads)
        outcome = run_probe(request, runtime)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    if outcome is None:  # under torchrun: this rank's share of the extraction is done
        return
    _write_output(outcome, output_path, log_samples, store)
    files = {name: str(path) for name, path in outcome.files.items()}
    if as_json:
        payload = {"analysis_id": outcome.analysis_id, **outcome.result, "files": files}
        typer.echo(json.dumps(payload))
        return
    typer.echo(terminal_safe(probe_terminal_text(outcome.result)))  # class names inside
    for warning in outcome.result["warnings"]:
        typer.echo(f"warning: {terminal_safe(warning)}", err=True)
    failed = outcome.result["n_failed"]
    if failed["train"] or failed["eval"]:
        typer.echo(f"skipped undecodable images: {failed['train']} train, {failed['eval']} eval")
    typer.echo(f"analysis {outcome.analysis_id} stored in {store}")
    for name, path in files.items():
        typer.echo(f"{name}: {path}")


def _write_output(
    outcome: ProbeOutcome, out_dir: Path | None, log_samples: bool, store: Path
) -> None:
    """``--output-path``: the analysis's results JSON and, with ``--log-samples``, a line per
    evaluated example and probe."""
    from vlmclf.analysis.probe.run import probe_sample_rows

    result = outcome.result
    protocol = {"name": result["protocol"], **result["settings"],
                "reported": result["reported"]}  # fmt: skip
    samples = probe_sample_rows(outcome) if log_samples else None
    write_analysis_output(out_dir, store, outcome.analysis_id, protocol=protocol,
                          samples=samples)  # fmt: skip


def probe_terminal_text(result: dict) -> str:
    """The probe's table for the terminal: the Markdown file's content without its escapes."""
    from vlmclf.analysis.probe.report import probe_text

    return probe_text(result)
