"""``vlmclf finetune``: fine-tune a VLM on classification data with the generation objective."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from vlmclf.commands.common import (
    DEFAULT_STORE,
    DEVICE_HELP,
    OUTPUT_PATH_HELP,
    REPORTS_DIR,
    SEED_MAX,
    THREADS_HELP,
    at_least,
    batch_size_or_auto,
    check_output_dir,
    fail,
    number_in,
    out_folder,
    renamed,
    resolve_hardware,
    use_threads,
    warn_deprecated,
    write_analysis_output,
    write_stored_run_files,
)
from vlmclf.terminal import terminal_safe

Opt = typer.Option
EXIT_DIVERGED = 3
DEFAULT_STEP_BATCH = 64  # FinetuneRequest.batch_size's default
AUTO_BATCH = "auto"  # run.batching.AUTO (not imported: the CLI starts without torch)


class TrainParts(StrEnum):
    projector = "projector"
    projector_lora = "projector+lora"


class Trainables(StrEnum):
    projector = "projector"
    qformer = "qformer"


class LoraTargets(StrEnum):
    attention = "attention"
    all_linear = "all-linear"


class Schedule(StrEnum):
    cosine = "cosine"
    linear = "linear"


def finetune_command(
    ctx: typer.Context,
    model: Annotated[
        str, Opt(help="An open-weight VLM: hf:<id|path>, random:llava|qwen2_vl|..., organism:vlm.")
    ],
    dataset: Annotated[
        str, Opt(help="Classification data: NAME (fashion_mnist, imagefolder, ...) or .jsonl.")
    ],
    train_split: Annotated[str, Opt(help="Split trained on.")] = "train",
    eval_split: Annotated[
        str | None, Opt(help="Split scored with --limit (default: the layout's test split).")
    ] = None,
    data_root: Annotated[str | None, Opt(help="Where the (evaluation) data lives.")] = None,
    train_data_root: Annotated[
        str | None, Opt(help="Where the training data lives (default --data-root).")
    ] = None,
    classes: Annotated[str | None, Opt(help="Class-name list (shipped name or file).")] = None,
    train: Annotated[
        TrainParts, Opt(help="projector, or projector+lora (LoRA on the LM's attention).")
    ] = TrainParts.projector,
    trainable: Annotated[
        Trainables,
        Opt(
            help="projector, or qformer: BLIP-2/InstructBLIP's Q-Former + projection (vision "
            "tower frozen)."
        ),
    ] = Trainables.projector,
    lora_targets: Annotated[
        LoraTargets,
        Opt(help="attention (q,k,v,o) or all-linear (every linear layer of the LM, the paper's)."),
    ] = LoraTargets.attention,
    lora_rank: Annotated[int, Opt(callback=at_least(1), help="LoRA rank.")] = 8,
    lora_alpha: Annotated[int, Opt(callback=at_least(1), help="LoRA alpha.")] = 16,
    lora_dropout: Annotated[float, Opt(callback=number_in(0, 1), help="LoRA dropout.")] = 0.05,
    lr_projector: Annotated[
        float, Opt(callback=at_least(0), help="Projector peak learning rate.")
    ] = 2e-5,
    lr_lora: Annotated[float, Opt(callback=at_least(0), help="LoRA peak learning rate.")] = 2e-4,
    weight_decay: Annotated[float, Opt(callback=at_least(0), help="AdamW weight decay.")] = 0.0,
    warmup_ratio: Annotated[
        float, Opt(callback=number_in(0, 1), help="Share of steps with linear warm-up.")
    ] = 0.03,
    schedule: Annotated[Schedule, Opt(help="Decay after warm-up.")] = Schedule.cosine,
    step_batch_size: Annotated[
        int,
        Opt(callback=at_least(1), help="Examples per optimiser step, over all ranks (the paper's "
            "batch size; finetune's --batch-size before this release)."),
    ] = DEFAULT_STEP_BATCH,
    batch_size: Annotated[
        str,
        Opt(callback=batch_size_or_auto, help="Examples per model call, as in every command: a "
            "training forward pass; the gradients of a step's calls add up; a "
            "number, or auto (a rank's whole share of the step in one call)."),
    ] = AUTO_BATCH,
    micro_batch: Annotated[
        int | None, Opt(callback=at_least(1), hidden=True, help="Old name of --batch-size.")
    ] = None,
    epochs: Annotated[
        float, Opt(callback=number_in(0, low_open=True), help="Passes over the training items.")
    ] = 1.0,
    steps: Annotated[
        int | None, Opt(callback=at_least(1), help="Optimiser steps (overrides --epochs).")
    ] = None,
    train_limit: Annotated[
        int | None,
        Opt(callback=at_least(1), help="Train on a fixed random subset of this many examples."),
    ] = None,
    max_grad_norm: Annotated[
        float, Opt(callback=number_in(0, low_open=True), help="Gradient clipping norm.")
    ] = 1.0,
    spike_factor: Annotated[
        float,
        Opt(
            callback=at_least(0),
            help="Stop when the loss exceeds this x its running median (0: off).",
        ),
    ] = 5.0,
    spike_window: Annotated[
        int, Opt(callback=at_least(1), help="Steps in the running median.")
    ] = 50,
    grad_spike_factor: Annotated[
        float,
        Opt(
            callback=at_least(0),
            help="Stop when the gradient norm exceeds this x its running median (0: off).",
        ),
    ] = 100.0,
    caption_data: Annotated[
        bool, Opt("--caption-data", help="Answer with a caption instead of the bare name.")
    ] = False,
    caption_template: Annotated[str, Opt(help="Caption for --caption-data.")] = "A photo of a {}.",
    mix_instructions: Annotated[
        Path | None, Opt(help="LLaVA-format instruction data (.json/.jsonl) to mix in.")
    ] = None,
    mix_ratio: Annotated[
        float, Opt(callback=number_in(0, 1), help="Share of instruction items in the mix.")
    ] = 0.5,
    image_folder: Annotated[
        str | None, Opt(help="Folder the instruction data's image paths are relative to.")
    ] = None,
    seed: Annotated[
        int,
        Opt(callback=number_in(0, SEED_MAX), help="Seed of the data order (and random: weights)."),
    ] = 0,
    workers: Annotated[
        int, Opt(callback=at_least(1), help="Threads decoding the next batch's images.")
    ] = 4,
    limit: Annotated[
        int | None,
        Opt(
            callback=at_least(1),
            help="Score generation before and after on this many eval examples (as eval's and "
            "probe's --limit).",
        ),
    ] = None,
    old_eval_limit: Annotated[
        int | None, Opt("--eval-limit", hidden=True, help="Old name of --limit.")
    ] = None,
    eval_batch_size: Annotated[
        int, Opt(callback=at_least(1), help="Examples per model call in the --limit runs.")
    ] = 8,
    match: Annotated[
        str,
        Opt(
            help="How --limit answers map to labels: contain, exact (the paper's rule "
            "for fine-tuned models), strict, nli, embed."
        ),
    ] = "contain",
    device: Annotated[str, Opt(help=DEVICE_HELP)] = "auto",
    dtype: Annotated[
        str,
        Opt(help="auto (the checkpoint's own on a GPU, bfloat16 for a float16 one; float32 on "
                 "CPU), float32, float16, bfloat16."),
    ] = "auto",
    store: Annotated[Path, Opt("--store", help="The run and analysis store.")] = DEFAULT_STORE,
    out: Annotated[Path | None, out_folder("Checkpoint and log folder.")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print one JSON object.")] = False,
    progress: Annotated[bool, Opt(help="Print each step's loss on stderr.")] = True,
    protocol: Annotated[
        str,
        Opt(help="clean (default) or paper: sets the training options above unless given, and "
                 "the conversation trained and evaluated (the paper's LLaVA: vicuna_v1)."),
    ] = "clean",
    threads: Annotated[int | None, Opt(callback=at_least(1), help=THREADS_HELP)] = None,
    output_path: Annotated[
        Path | None,
        Opt(help=OUTPUT_PATH_HELP + " With --limit, also the before and after runs' files."),
    ] = None,
    log_samples: Annotated[
        bool,
        Opt("--log-samples", help="With --output-path and --limit: samples_<run_id>.jsonl of "
            "the before and after runs, one line per example."),
    ] = False,
) -> None:
    """Fine-tune a VLM's projector (and LoRA) on classification data; the checkpoint loads
    with `vlmclf eval --model`. Exits 3 with a report if the loss diverges."""
    from vlmclf.analysis.finetune.data import CLASSIFICATION_QUESTION
    from vlmclf.analysis.finetune.log import TrainingDiverged
    from vlmclf.analysis.finetune.run import FinetuneRequest, FinetuneRuntime, run_finetune
    from vlmclf.run.distributed import is_main_process
    from vlmclf.run.loading import ModelOptions

    eval_limit = renamed("--eval-limit", old_eval_limit, "--limit", limit)
    step_batch, call_batch = _batch_sizes(ctx, batch_size, step_batch_size, micro_batch)
    for name, value in (("--steps", steps), ("--train-limit", train_limit),
                        ("--limit", eval_limit)):  # fmt: skip
        if value is not None and value < 1:
            fail(f"{name} must be at least 1, got {value}")
    o = _protocol_options(ctx, protocol, model, step_batch)
    check_output_dir(output_path, log_samples)
    if log_samples and eval_limit is None:
        fail("--log-samples logs the examples of the before and after runs: give --limit N")
    request = FinetuneRequest(
        model=model, dataset=dataset, train_split=train_split, eval_split=eval_split,
        data_root=data_root, train_data_root=train_data_root, classes=classes, train=train.value,
        trainable=trainable.value, lora_targets=o["lora_targets"], match=o["match"],
        lora_rank=o["lora_rank"], lora_alpha=o["lora_alpha"], lora_dropout=lora_dropout,
        lr_projector=o["lr_projector"], lr_lora=lr_lora, weight_decay=o["weight_decay"],
        warmup_ratio=o["warmup_ratio"], schedule=o["schedule"], batch_size=o["batch_size"],
        epochs=o["epochs"], protocol=protocol, question=o["question"] or CLASSIFICATION_QUESTION,
        prompt_template=o["prompt_template"], eval_max_new_tokens=o["eval_max_new_tokens"],
        steps=steps, train_limit=train_limit, max_grad_norm=max_grad_norm,
        spike_factor=spike_factor, spike_window=spike_window, grad_spike_factor=grad_spike_factor,
        caption_data=caption_data, caption_template=caption_template,
        mix_instructions=str(mix_instructions) if mix_instructions else None, mix_ratio=mix_ratio,
        image_folder=image_folder, seed=seed,
    )  # fmt: skip
    device, dtype = resolve_hardware(model, device, dtype, training=True)
    out_dir = out or REPORTS_DIR / f"finetune-{_slug(model)}-{train.value.replace('+', '-')}"
    runtime = FinetuneRuntime(
        out_dir=out_dir, store_path=store, micro_batch=call_batch, eval_limit=eval_limit,
        eval_batch_size=eval_batch_size,
        progress=progress, workers=workers,
        model_options=ModelOptions(device=device, dtype=dtype, seed=seed),
    )  # fmt: skip
    written = _OutputFiles(output_path, log_samples, store, request)
    try:
        use_threads(threads)
        outcome = run_finetune(request, runtime)
    except TrainingDiverged as stop:
        if is_main_process():  # under torchrun every rank stops; the main rank reports
            _report_divergence(stop, out_dir, as_json)
            written.write(stop.analysis_id)
        raise typer.Exit(EXIT_DIVERGED) from None
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    if outcome is None:  # under torchrun: this rank's share of the training is done
        return
    written.write(outcome.analysis_id)
    files = {name: str(path) for name, path in outcome.files.items()}
    if as_json:
        payload = {"analysis_id": outcome.analysis_id, **outcome.result, "files": files}
        typer.echo(json.dumps(payload))
        return
    _print_summary(outcome.result, outcome.analysis_id, store, files)


@dataclass(frozen=True)
class _OutputFiles:
    """``--output-path``: the fine-tune's results JSON, and the files of its before and after
    runs (``--limit``) as ``eval`` writes them, with ``--log-samples`` their samples."""

    out_dir: Path | None
    log_samples: bool
    store: Path
    request: Any  # FinetuneRequest (imported with torch, inside the command)

    def write(self, analysis_id: str | None) -> None:
        from vlmclf.store import RunStore

        if self.out_dir is None or analysis_id is None:
            return
        request = self.request
        protocol = {"name": request.protocol, "question": request.question,
                    "prompt_template": request.prompt_template or "the family's own format",
                    "match": request.match,
                    "eval_max_new_tokens": request.eval_max_new_tokens}  # fmt: skip
        write_analysis_output(self.out_dir, self.store, analysis_id, protocol=protocol)
        with RunStore(self.store, read_only=True) as runs:
            record = runs.get_analysis(analysis_id)
        scored = [record.result.get(when) or {} for when in ("before", "after")] if record else []
        run_ids = [entry["run_id"] for entry in scored if entry.get("run_id")]
        write_stored_run_files(self.out_dir, self.store, run_ids, data_root=request.data_root,
                               classes=request.classes, log_samples=self.log_samples)  # fmt: skip


def _protocol_options(
    ctx: typer.Context, protocol: str, model: str, step_batch: int | None
) -> dict[str, Any]:
    """The training options after the protocol's values (explicit options win), enums as
    their values, and the protocol's question, template and evaluation budget. The protocol's
    ``batch_size`` is per optimiser step (``step_batch``: the one given, None if none was)."""
    from vlmclf.paper.finetune_settings import FINETUNE_OPTIONS, resolve_finetune_options

    given = {name: ctx.params[name] for name in FINETUNE_OPTIONS if name != "batch_size"}
    given = {k: v.value if isinstance(v, StrEnum) else v for k, v in given.items()}
    given["batch_size"] = step_batch or DEFAULT_STEP_BATCH
    explicit = {name for name in FINETUNE_OPTIONS if name != "batch_size" and _typed(ctx, name)}
    if step_batch is not None:
        explicit.add("batch_size")
    try:
        return resolve_finetune_options(protocol, model, given, explicit)
    except ValueError as err:
        fail(str(err))


def _typed(ctx: typer.Context, name: str) -> bool:
    """Whether the user gave the option (typer ships its own click: compare the source by name)."""
    return getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"


def _batch_sizes(
    ctx: typer.Context, per_call: str, per_step: int, old_micro: int | None
) -> tuple[int | None, int | None]:
    """(examples per optimiser step, None if not given; examples per model call, None: auto).

    Before this release finetune's ``--batch-size`` was per optimiser step and ``--micro-batch``
    per call. For one release a command line in the old spelling trains as it did: a number
    given as ``--batch-size`` without ``--step-batch-size`` sets both (the old default was one
    call per step), and with ``--micro-batch`` it is the step and ``--micro-batch`` the call."""
    step_given = _typed(ctx, "step_batch_size")
    call = None if per_call == AUTO_BATCH else int(per_call)
    if old_micro is not None:
        if call is not None and step_given:
            fail("--micro-batch is the old name of --batch-size: give --batch-size only")
        if call is not None:  # the old pair: --batch-size per step, --micro-batch per call
            warn_deprecated(f"--batch-size {call} --micro-batch {old_micro} is deprecated and "
                            "goes in the next release; use --step-batch-size "
                            f"{call} --batch-size {old_micro}")  # fmt: skip
            return call, old_micro
        return (per_step if step_given else None), renamed("--micro-batch", old_micro,
                                                           "--batch-size", None)  # fmt: skip
    if call is not None and not step_given:
        warn_deprecated(f"finetune --batch-size {call} now means examples per model call, as in "
                        f"every command; for one release it also sets --step-batch-size {call} "
                        "(its old meaning): give --step-batch-size to choose the step")  # fmt: skip
        return call, call
    return (per_step if step_given else None), call


def _slug(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.split("/")[-1])[:60]


def _report_divergence(stop: Any, out_dir: Path, as_json: bool) -> None:
    log = out_dir / "train_log.csv"
    if as_json:
        typer.echo(json.dumps({"status": "diverged", "divergence": stop.report.as_dict(),
                               "report": str(stop.report_path), "log": str(log)}))  # fmt: skip
        return
    typer.echo(f"error: {terminal_safe(stop.report.message())}", err=True)
    typer.echo(f"report: {stop.report_path}\nloss log: {log}", err=True)


def _print_summary(result: dict, analysis_id: str, store: Path, files: dict[str, str]) -> None:
    items = result["data"]["total_items"]
    typer.echo(f"fine-tuned {result['model']} ({result['train']}) for {result['steps']} steps "
               f"in {result['wall_time_s']} s on {items} items")  # fmt: skip
    typer.echo(f"loss {result['first_loss']:.4f} -> {result['final_loss']:.4f} "
               "(first step -> mean of the last tenth)")  # fmt: skip
    for when in ("before", "after"):
        if when not in result:
            continue
        scored = result[when]
        if scored.get("error"):
            typer.echo(f"accuracy {when}: not measured ({terminal_safe(scored['error'])})")
            continue
        accuracy = "-" if scored["accuracy"] is None else f"{scored['accuracy']:.3f}"
        typer.echo(f"accuracy {when}: {accuracy} on {scored['n']} examples ({scored['model']})")
    typer.echo(f"checkpoint: {result['checkpoint']}  (vlmclf eval --model {result['checkpoint']})")
    typer.echo(f"analysis {analysis_id} stored in {store}")
    for name, path in files.items():
        typer.echo(f"{name}: {path}")
