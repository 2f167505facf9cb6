"""``vlmclf probe``: train probes on a VLM's hidden states (and a CLIP's image embeddings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _weight_decays(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        _fail(f"--weight-decays must be comma-separated numbers, got {text!r}")
    if not values or any(v < 0 for v in values):
        _fail(f"--weight-decays must list non-negative numbers, got {text!r}")
    return values


def probe_command(
    model: Annotated[str, typer.Option(help="A VLM with hidden states: hf:<id|path>, random:<family>, organism:vlm.")],
    dataset: Annotated[str, typer.Option(help="Evaluation data: a manifest .jsonl or NAME[:split] (fashion_mnist, imagefolder, ...).")],
    train_split: Annotated[str, typer.Option(help="Split the probe is trained on.")] = "train",
    eval_split: Annotated[Optional[str], typer.Option(help="Split it is scored on (default: the layout's test/val split).")] = None,
    train_dataset: Annotated[Optional[str], typer.Option(help="Training data if not the same dataset (NAME or manifest).")] = None,
    data_root: Annotated[Optional[str], typer.Option(help="Where the evaluation data lives.")] = None,
    train_data_root: Annotated[Optional[str], typer.Option(help="Where the training data lives (default: --data-root; an imagefolder needs its own).")] = None,
    classes: Annotated[Optional[str], typer.Option(help="Class-name list: a shipped name or a JSON/text file.")] = None,
    layer: Annotated[int, typer.Option(help="Language-model layer (0 = embeddings, -1 = last).")] = -1,
    prompt: Annotated[str, typer.Option(help="base, alt1, alt2, or the question itself.")] = "base",
    train_limit: Annotated[Optional[int], typer.Option(help="Train on a fixed random subset of this many examples.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Score a fixed random subset of this many examples.")] = None,
    clip_model: Annotated[Optional[str], typer.Option(help="Also probe this CLIP model's image embeddings (baseline).")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs per probe (paper protocol: the best on eval is reported).")] = 50,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    probe_batch_size: Annotated[int, typer.Option(help="Probe training batch size.")] = 512,
    weight_decays: Annotated[str, typer.Option(help="Clean protocol's weight-decay grid, comma-separated.")] = "0,1e-4,1e-3,1e-2",
    val_fraction: Annotated[float, typer.Option(help="Clean protocol: share of train held out for validation.")] = 0.2,
    mlp: Annotated[Optional[int], typer.Option("--mlp", help="Use a one-hidden-layer MLP of this width instead of a linear probe.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the probes and the validation split.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per model call when extracting features.")] = 16,
    workers: Annotated[int, typer.Option(help="Threads decoding images ahead of the model.")] = 2,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Feature cache (default $VLMCLF_CACHE_DIR/features or ~/.cache/vlmclf/features).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N, mps.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, float16, bfloat16.")] = "float32",
    store: Annotated[Path, typer.Option("--store", help="SQLite file that keeps runs and analyses.")] = Path("vlmclf-runs.sqlite"),
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for the table and figure (default ./reports/probe-<id>/).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars on stderr.")] = True,
) -> None:
    """Probe a VLM's hidden states: the paper's protocol and a clean one, both reported."""
    from vlmclf.analysis.probe import ProbeConfig, ProbeRequest, ProbeRuntime, run_probe
    from vlmclf.loading import ModelOptions

    for name, value in (("--train-limit", train_limit), ("--limit", limit), ("--epochs", epochs)):
        if value is not None and value < 1:
            _fail(f"{name} must be at least 1, got {value}")
    config = ProbeConfig(
        epochs=epochs, lr=lr, batch_size=probe_batch_size, weight_decays=_weight_decays(weight_decays),
        val_fraction=val_fraction, mlp_hidden=mlp, seed=seed,
    )  # fmt: skip
    request = ProbeRequest(
        model=model, dataset=dataset, train_split=train_split, eval_split=eval_split,
        train_dataset=train_dataset, data_root=data_root, train_data_root=train_data_root,
        classes=classes, layer=layer, prompt=prompt, train_limit=train_limit, limit=limit,
        clip_model=clip_model, config=config,
    )  # fmt: skip
    runtime = ProbeRuntime(
        store_path=store, out_dir=out, cache_dir=cache_dir, batch_size=batch_size,
        workers=workers, progress=progress, model_options=ModelOptions(device=device, dtype=dtype, seed=seed),
    )  # fmt: skip
    try:
        outcome = run_probe(request, runtime)
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))
    files = {name: str(path) for name, path in outcome.files.items()}
    if as_json:
        typer.echo(json.dumps({"analysis_id": outcome.analysis_id, **outcome.result, "files": files}))
        return
    typer.echo(outcome.files["markdown"].read_text())
    for warning in outcome.result["warnings"]:
        typer.echo(f"warning: {warning}", err=True)
    failed = outcome.result["n_failed"]
    if failed["train"] or failed["eval"]:
        typer.echo(f"skipped undecodable images: {failed['train']} train, {failed['eval']} eval")
    typer.echo(f"analysis {outcome.analysis_id} stored in {store}")
    for name, path in files.items():
        typer.echo(f"{name}: {path}")
