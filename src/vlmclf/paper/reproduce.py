"""`vlmclf reproduce TABLE`: the exact commands behind each of the paper's tables and figures.

A table is a list of ``Step``s: one vlmclf command each, and how to read its ``--json`` output
into cells (row, column). The settings come from the protocol (``vlmclf.paper.protocols``),
passed as ``--protocol`` to eval and spelled out as options for the analyses; ``run_steps`` runs the
commands as a user would (a subprocess each, resumable through the store) and ``layout`` writes
the cells in the table's rows and columns, each beside the number the paper prints for it
(``data/protocols/published.json``, matched in ``published_cells``) and the difference.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from vlmclf.methods.prompts import PAPER_WORDINGS
from vlmclf.paper.probe_settings import clip_baseline_values, epochs_for
from vlmclf.paper.protocols import resolve, split_for
from vlmclf.paper.published_cells import published_cell
from vlmclf.paper.reproduce_likelihood import likelihood_table_cells
from vlmclf.paper.steps import Cells, Context, Reader, Step, Table
from vlmclf.report.published import beside

# --------------------------------------------------------------------------- command pieces


def _data_args(
    ctx: Context, dataset: str, role: str = "test", option: str = "--split"
) -> list[str]:
    """--dataset, --data-root and the split (``option``) where the protocol's differs."""
    args = ["--dataset", dataset]
    root = ctx.root(dataset)
    if root:
        args += ["--data-root", root]
    split = split_for(ctx.protocol, dataset, role)
    if split and split != split_for("clean", dataset, role):  # only where the protocol differs
        args += [option, split]
    return args


def _common(ctx: Context) -> list[str]:
    args: list[str] = []
    if ctx.store:
        args += ["--store", ctx.store]
    if ctx.device:
        args += ["--device", ctx.device]
    if ctx.dtype:
        args += ["--dtype", ctx.dtype]
    return args


def eval_argv(ctx: Context, model: str, dataset: str, *options: str) -> tuple[str, ...]:
    """``vlmclf eval`` under the context's protocol; ``--limit`` where the user set one."""
    args = ["eval", "--model", model, *_data_args(ctx, dataset), *options]
    args += ["--protocol", ctx.protocol, *_common(ctx)]
    if ctx.limit is not None and "--limit" not in options:
        args += ["--limit", str(ctx.limit)]
    return tuple(args)


OUTPUT_PATH_COMMANDS = frozenset({"eval", "sweep", "probe", "finetune", "wikiqa", "frequency"})
"""The commands that write results files with ``--output-path``."""


def with_output_path(steps: list[Step], out_dir: str) -> list[Step]:
    """Every step whose command writes results files writes them into ``out_dir``
    (``vlmclf reproduce --output-path``): one folder holds the files behind a table."""
    return [
        replace(step, argv=(*step.argv, "--output-path", out_dir))
        if step.argv[0] in OUTPUT_PATH_COMMANDS else step
        for step in steps
    ]  # fmt: skip


def metric(row: str, column: str, key: str = "accuracy") -> Reader:
    return lambda out, ctx: {(row, column): _dig(out, key)}


def _dig(payload: dict[str, Any], dotted: str) -> float | None:
    node: Any = payload
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


# --------------------------------------------------------------------------- tables


def table1(ctx: Context) -> list[Step]:
    """Open- and closed-world generation of the VLM against CLIP zero-shot, per dataset."""
    steps = []
    for ds in ctx.datasets:
        for setting in ("open", "closed"):
            row = f"{ctx.model} ({setting} world)"
            options = ("--method", "generate", "--setting", setting)
            steps.append(Step(eval_argv(ctx, ctx.model, ds, *options), metric(row, ds)))
        if ctx.clip_model:
            row = f"{ctx.clip_model} (zero-shot)"
            argv = eval_argv(ctx, ctx.clip_model, ds, "--method", "clip")
            steps.append(Step(argv, metric(row, ds)))
    return steps


def table2(ctx: Context) -> list[Step]:
    """Top: the four wordings (open world). Bottom: probabilistic inference (likelihood)."""
    steps = []
    for ds in ctx.datasets:
        for wording in PAPER_WORDINGS:
            argv = eval_argv(ctx, ctx.model, ds, "--method", "generate", "--prompt", wording)
            steps.append(Step(argv, metric(f"generation, prompt {wording}", ds)))
        steps += likelihood_steps(ctx, ds)
    return steps


def likelihood_steps(ctx: Context, dataset: str) -> list[Step]:
    """One scored run gives sum and mean, top-1 and top-5, and (paper) every CFG weight."""
    settings = resolve(ctx.protocol, "likelihood")
    limit = ctx.limit if ctx.limit is not None else settings.get("limit")
    options = ["--method", "likelihood", "--limit", str(limit)]
    if ctx.protocol == "paper":
        options += ["--sample", "paper"]  # the seed-1234 shuffle subset (vlmclf eval --sample)
    steps = [Step(eval_argv(ctx, ctx.model, dataset, *options), likelihood_cells(dataset))]
    if settings.get("cfg_choice") == "validation":
        sweep = [*options, "--cfg-sweep", "--val-split", split_for(ctx.protocol, dataset, "train")]
        reader = metric("likelihood sum, CFG t chosen on validation", dataset)
        steps.append(Step(eval_argv(ctx, ctx.model, dataset, *sweep), reader))
    return steps


def likelihood_cells(dataset: str) -> Reader:
    def read(out: dict[str, Any], ctx: Context) -> Cells:
        return likelihood_table_cells(out, ctx, dataset)

    return read


def table3(ctx: Context) -> list[Step]:
    """Probing the VLM's hidden states (and CLIP's embeddings); fine-tuning the VLM."""
    settings = resolve(ctx.protocol, "probe")
    steps = []
    for ds in ctx.datasets:
        epochs = epochs_for(settings, "epochs", ds) or 50
        argv = ["probe", "--model", ctx.model, *_data_args(ctx, ds, option="--eval-split")]
        argv += ["--train-split", split_for(ctx.protocol, ds, "train") or "train"]
        argv += ["--protocol", ctx.protocol, "--epochs", str(epochs), "--lr", str(settings["lr"])]
        argv += ["--probe-batch-size", str(settings["probe_batch_size"])]
        if ctx.clip_model:
            argv += ["--clip-model", ctx.clip_model]
            clip_epochs = clip_baseline_values(ctx.protocol, ds)[0]
            argv += ["--clip-epochs", str(clip_epochs)] if clip_epochs else []
        if ctx.limit is not None:
            argv += ["--limit", str(ctx.limit), "--train-limit", str(4 * ctx.limit)]
        steps.append(Step((*argv, *_common(ctx)), probe_cells(ds)))
    fine = resolve(ctx.protocol, "finetune")
    for ds, parts in ((ds, parts) for ds in ctx.datasets[:1] for parts in TRAINED_PARTS):
        argv = ["finetune", "--model", ctx.model, *_data_args(ctx, ds, "train", "--train-split")]
        argv += ["--train", parts, "--epochs", str(fine["epochs"])]
        argv += ["--lora-rank", str(fine["lora_rank"]), "--lora-alpha", str(fine["lora_alpha"])]
        argv += [
            "--lora-targets",
            fine["lora_targets"],
            "--lr-projector",
            str(fine["lr_projector"]),
        ]
        argv += ["--weight-decay", str(fine["weight_decay"]), "--warmup-ratio",
                 str(fine["warmup_ratio"]),
                 "--step-batch-size", str(fine["batch_size"])]  # fmt: skip
        argv += ["--protocol", ctx.protocol]  # the conversation trained and evaluated
        note = (
            f"then: vlmclf eval --model hf:<checkpoint> --method generate --match {fine['match']}"
            " (--limit N scores it here, asked as it was trained)"
        )
        steps.append(Step((*argv, *_common(ctx)), lambda out, ctx: {}, note))
    return steps


TRAINED_PARTS = ("projector", "projector+lora")


def probe_cells(dataset: str) -> Reader:
    protocol_key = "paper"  # the paper's rows report the best test epoch; clean is printed too

    def read(out: dict[str, Any], ctx: Context) -> Cells:
        cells: Cells = {}
        for source, block in (("VLM", out), ("CLIP", out.get("clip_baseline") or {})):
            for pooling, entry in (block.get("features") or {}).items():
                for name in (protocol_key, "clean"):
                    row = f"{source} probe, {pooling} ({name} protocol)"
                    cells[(row, dataset)] = _dig(entry, f"protocols.{name}.accuracy")
        return cells

    return read


def table4(ctx: Context) -> list[Step]:
    """ImageWikiQA: the model (and, if given, its classification-fine-tuned version)."""
    settings = resolve(ctx.protocol, "wikiqa")
    models = [ctx.model] + ([ctx.finetuned_model] if ctx.finetuned_model else [])
    steps = []
    for model in models:
        argv = ["wikiqa", "--model", model, "--protocol", ctx.protocol]
        if ctx.wikiqa_images:
            argv += ["--wikiqa-images", ctx.wikiqa_images]
        if settings.get("cot"):
            argv.append("--cot")
        argv += ["--max-new-tokens", str(settings["max_new_tokens"])]
        if ctx.limit is not None:
            argv += ["--limit", str(ctx.limit)]
        steps.append(Step((*argv, *_common(ctx)), metric(model, "ImageWikiQA", "summary.accuracy")))
    return steps


def table7(ctx: Context) -> list[Step]:
    """Label order and chain of thought in the closed world (analyze_label_order/_cot.sh)."""
    steps = []
    for ds in ctx.datasets:
        closed = ("--method", "generate", "--setting", "closed")
        for order in ("random", "fixed"):
            argv = eval_argv(ctx, ctx.model, ds, *closed, "--order", order)
            steps.append(Step(argv, metric(f"closed world, {order} order", ds)))
        argv = eval_argv(ctx, ctx.model, ds, *closed, "--cot")
        steps.append(Step(argv, metric("closed world, chain of thought", ds)))
    return steps


K_VALUES = (2, 5, 20, 100)


def k_steps(ctx: Context) -> list[Step]:
    """Closed-world accuracy against the label-set size K (analyze_label_size.sh)."""
    steps = []
    for ds in ctx.datasets:
        for k in K_VALUES:
            argv = eval_argv(ctx, ctx.model, ds, "--method", "generate", "--setting", "closed",
                             "--k", str(k))  # fmt: skip
            steps.append(Step(argv, metric(f"{ctx.model} {ds}", f"K={k}")))
            if ctx.clip_model:
                argv = eval_argv(ctx, ctx.clip_model, ds, "--method", "clip", "--k", str(k))
                steps.append(Step(argv, metric(f"{ctx.clip_model} {ds}", f"K={k}")))
    return steps


def figure3(ctx: Context) -> list[Step]:
    """Class frequency in the training text against per-class open-world accuracy."""
    ds = ctx.datasets[0]
    run = eval_argv(ctx, ctx.model, ds, "--method", "generate", "--setting", "open")
    bins = resolve(ctx.protocol, "frequency").get("bins", "log")
    argv = ["frequency", *[a for c in ctx.corpus or ("CORPUS",) for a in ("--corpus", c)]]
    argv += ["--classes", ds, "--run", "{run_id}", "--bins", bins]
    if ctx.store:
        argv += ["--store", ctx.store]
    read_corr: Reader = lambda out, ctx: {  # noqa: E731
        ("Spearman", ds): _dig(out, "correlation.spearman"),
        ("Pearson (raw counts)", ds): _dig(out, "correlation.pearson"),
        ("Pearson (log1p counts)", ds): _dig(out, "correlation.pearson_log1p"),
    }
    return [Step(run, lambda out, ctx: {}, "gives {run_id}"), Step(tuple(argv), read_corr)]


def thesis(ctx: Context) -> list[Step]:
    """The thesis's 20-, 100- and 1000-way ImageNet: accuracy and macro P/R/F1."""
    steps = []
    settings = resolve("thesis", "generate")
    for ds in ctx.datasets[:1]:
        # the thesis's names (first synonyms) are ImageNet's; other datasets keep their own
        names = ("--classes", settings["class_names"]) if ds == "imagenet" else ()
        for k in settings["k_values"]:
            argv = eval_argv(ctx, ctx.model, ds, "--method", "generate", "--k", str(k), *names)
            steps.append(Step(argv, thesis_cells(f"{ctx.model}, {k}-way")))
        if ctx.clip_model:
            argv = eval_argv(ctx, ctx.clip_model, ds, "--method", "clip", "--k", "100", *names)
            steps.append(Step(argv, thesis_cells(f"{ctx.clip_model}, 100-way")))
    return steps


def thesis_cells(row: str) -> Reader:
    keys = (("accuracy", "accuracy"), ("precision", "macro_precision"),
            ("recall", "macro_recall"), ("F1", "macro_f1"))  # fmt: skip
    return lambda out, ctx: {(row, column): _dig(out, key) for column, key in keys}


TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table("table1", "VLMs against CLIP, open and closed world",
              "rows: models; columns: datasets", table1),
        Table("table2", "Inference: the four wordings; probabilistic inference",
              "rows: wordings, then likelihood aggregates and CFG weights; columns: datasets",
              table2),
        Table("table3", "Probing hidden states; fine-tuning", "rows: features and protocol; "
              "columns: datasets (fine-tuning: commands only)", table3,
              notes=("BLIP-2: the paper trains the Q-Former (--trainable qformer) with weight "
                     "decay 0.05, 1000 warm-up steps, 100 epochs",)),
        Table("table4", "ImageWikiQA", "rows: models; column: accuracy", table4),
        Table("table7", "Label order and chain of thought (closed world)",
              "rows: ablation; columns: datasets", table7,
              notes=("the paper prints these rows in its Table 2 ('label, fixed order', "
                     "'label, random order', '+ CoT')",)),
        Table("table9", "Accuracy against the label-set size K (the numbers of Figures 2, 4)",
              "rows: model and dataset; columns: K", k_steps,
              notes=("the paper prints these numbers in its Table 7",)),
        Table("figure2", "Accuracy against the label-set size K", "rows: model and dataset; "
              "columns: K", k_steps),
        Table("figure3", "Training-data frequency against accuracy",
              "rows: correlation; column: dataset", figure3, value="correlation"),
        Table("figure4", "Relative error rate against K (error at K / error at K=2)",
              "rows: model and dataset; columns: K", k_steps, value="relative error"),
        Table("thesis", "The thesis: 20-, 100-, 1000-way ImageNet",
              "rows: model and K; columns: accuracy, macro P / R / F1", thesis,
              notes=("its ResNet-50 and ViT-L/16 1000-way baselines: vlmclf eval --model "
                     "hf:microsoft/resnet-50 --dataset imagenet --method classifier (and the "
                     "ViT-L/16 checkpoint the same way)",),
              protocol="thesis"),
    )
}  # fmt: skip


def table_by_name(name: str) -> Table:
    try:
        return TABLES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown table {name!r}; known: {', '.join(TABLES)}") from None


# --------------------------------------------------------------------------- running


def run_steps(steps: list[Step], ctx: Context, echo: Callable[[str], None]) -> Cells:
    """Run every command (a subprocess, as typed) and collect its cells."""
    cells: Cells = {}
    run_id: str | None = None
    for step in steps:
        argv = [a.replace("{run_id}", run_id or "{run_id}") for a in step.argv]
        echo("$ " + shlex.join(["vlmclf", *argv]))
        out = _run_json(argv)
        run_id = out.get("run_id", run_id)
        cells.update(step.read(out, ctx))
    return cells


def _run_json(argv: list[str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "vlmclf.cli", *argv, "--json", "--no-progress"]
    if argv[0] == "frequency":
        command.remove("--no-progress")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"`vlmclf {shlex.join(argv)}` failed ({done.returncode}): {tail[0]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- layout


LEGEND = (
    "Beside each of ours: (paper X, Δ d) the number the paper (or thesis) prints for the cell and "
    "ours minus it; (paper N/A) the paper prints N/A; (no published number) it prints none for "
    "this cell or this model. Published numbers: vlmclf/data/protocols/published.json."
)


def layout(table: Table, cells: Cells, ctx: Context) -> str:
    """The cells as a Markdown table in the paper's rows and columns, each with the published
    number beside it and the difference, or a note that there is none."""
    if table.name == "figure4":
        cells = relative_errors(cells)
    rows = list(dict.fromkeys(row for row, _ in cells))
    columns = list(dict.fromkeys(column for _, column in cells))
    percent = table.value not in ("correlation", "relative error")
    lines = [
        f"{table.title} ({table.value}; protocol {ctx.protocol})",
        "",
        "| | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for row in rows:
        values = [
            beside(cells.get((row, column)), published_cell(table.name, row, column, ctx), percent)
            for column in columns
        ]
        lines.append(f"| {row} | " + " | ".join(values) + " |")
    return "\n".join([*lines, "", LEGEND])


def relative_errors(cells: Cells) -> Cells:
    """Error at K divided by error at the smallest K, per row (Figure 4's quantity)."""
    out: Cells = {}
    for row in dict.fromkeys(r for r, _ in cells):
        base = cells.get((row, f"K={K_VALUES[0]}"))
        for k in K_VALUES:
            value = cells.get((row, f"K={k}"))
            ok = value is not None and base is not None and base < 1.0
            out[(row, f"K={k}")] = (1.0 - value) / (1.0 - base) if ok else None  # type: ignore[operator]
    return out
