"""`vlmclf wikiqa`: evaluate ImageWikiQA; `vlmclf wikiqa build`: make new questions.

cli.py registers the group: ``app.add_typer(wikiqa_app, name="wikiqa")``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
    old_out_file,
    out_dir_for,
    out_folder,
    renamed,
    required,
    resolve_batch,
    resolve_hardware,
)
from vlmclf.terminal import terminal_safe

if TYPE_CHECKING:
    from vlmclf.spec import RunSpec

CPU_BATCH = 8  # --batch-size auto on CPU and MPS

wikiqa_app = typer.Typer(
    help="ImageWikiQA: multiple-choice questions about the object in an ImageNet photo.",
    add_completion=False,
)


@wikiqa_app.callback(invoke_without_command=True)
def wikiqa_command(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="hf:, random:, organism:, openai:...")] = None,
    wikiqa_images: Annotated[
        Path | None,
        typer.Option(
            help="The ImageNet validation images the questions show (flat, or val/<wnid>/<file>)."
        ),
    ] = None,
    method: Annotated[str, typer.Option(help="generate or likelihood (scores A-D).")] = "generate",
    questions: Annotated[
        Path | None, typer.Option(help="Question JSONL (default: the shipped 2,000).")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(callback=at_least(1), help="A fixed random subset of questions.")
    ] = None,
    cot: Annotated[bool, typer.Option("--cot", help="Append a chain-of-thought cue.")] = False,
    max_new_tokens: Annotated[
        int | None, typer.Option(callback=at_least(1), help="Default 16, 256 with --cot.")
    ] = None,
    protocol: Annotated[
        str, typer.Option(help="clean (default) or paper: sets --cot, --max-new-tokens, "
                          "--parser and --unparsed unless given.")
    ] = "clean",
    unparsed: Annotated[
        str, typer.Option(help="An answer naming no single option: wrong (clean), or "
                          "random-letter (the paper's code: random.choice, seed 1234).")
    ] = "wrong",
    parser: Annotated[
        str, typer.Option(help="How a letter is read from an answer: robust (clean; None when "
                          "unclear), or mmmu (the paper's code: the MMMU rule, last mention wins).")
    ] = "robust",
    batch_size: Annotated[
        str,
        typer.Option(callback=batch_size_or_auto, help=batch_help(CPU_BATCH, "Questions per call")),
    ] = "auto",
    workers: Annotated[
        int, typer.Option(callback=at_least(1), help="Threads decoding images.")
    ] = 4,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    dtype: Annotated[str, typer.Option(help=DTYPE_HELP)] = "auto",
    base_url: Annotated[str | None, typer.Option(help="API base URL (OpenAI-compatible).")] = None,
    concurrency: Annotated[
        int, typer.Option(callback=at_least(1), help="Parallel API requests.")
    ] = 4,
    out: Annotated[Path | None, out_folder("Folder for the table and figure.")] = None,
    store: Annotated[Path, typer.Option(help="The run store.")] = DEFAULT_STORE,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    progress: Annotated[bool, typer.Option(help="Progress bar on stderr.")] = True,
    threads: Annotated[
        int | None, typer.Option(callback=at_least(1), help=THREADS_HELP)
    ] = None,
    output_path: Annotated[Path | None, typer.Option(help=OUTPUT_PATH_HELP)] = None,
    log_samples: Annotated[
        bool,
        typer.Option("--log-samples", help="With --output-path: samples_<run_id>.jsonl, one "
                     "line per question (image, question, options, answer, letter, hit)."),
    ] = False,
    images: Annotated[
        Path | None, typer.Option(hidden=True, help="Old name of --wikiqa-images.")
    ] = None,
) -> None:
    """Answer ImageWikiQA with a model; unparsed answers count as wrong (n_unparsed), or under
    --protocol paper get a random letter as in the paper's code."""
    if ctx.invoked_subcommand is not None:
        return
    from vlmclf.analysis.wikiqa.run import run_wikiqa, wikiqa_spec
    from vlmclf.commands.eval_checks import check_model_answers, check_model_spec
    from vlmclf.run.distributed import is_main_process
    from vlmclf.run.loading import ModelOptions

    images = renamed("--images", images, "--wikiqa-images", wikiqa_images)
    if model is None or images is None:
        fail("wikiqa needs --model and --wikiqa-images (or the subcommand `build`)")
    if method not in ("generate", "likelihood"):
        fail(f"--method must be generate or likelihood, got {method!r}")
    check_model_spec(model)
    check_output_dir(output_path, log_samples)
    chosen = _protocol_options(ctx, protocol, cot=cot, max_new_tokens=max_new_tokens,
                               unparsed=unparsed, parser=parser)  # fmt: skip
    device, dtype = resolve_hardware(model, device, dtype)  # dtype is in the run's identity
    try:
        template = _cot_template(model, method, protocol, bool(chosen["cot"]))
        spec = wikiqa_spec(model, method, questions=questions, cot=chosen["cot"],
                           max_new_tokens=chosen["max_new_tokens"], dtype=dtype,
                           unparsed=chosen["unparsed"], protocol=protocol,
                           prompt_template=template, parser=chosen["parser"],
                           answer_marker=_answer_marker(model, method, protocol))  # fmt: skip
    except ValueError as err:
        fail(str(err))
    options = ModelOptions(device=device, dtype=dtype, base_url=base_url, concurrency=concurrency)
    check_model_answers(model, options)  # a missing key, a silent server: before any work
    folder = out or out_dir_for("wikiqa", {"run": spec.run_id, "limit": limit})
    try:
        result = run_wikiqa(
            spec, images, store, folder, questions=questions, limit=limit,
            batch_size=resolve_batch(batch_size, device, CPU_BATCH),
            workers=workers, progress=progress, model_options=options, threads=threads,
        )  # fmt: skip
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        fail(str(err))
    if output_path is not None and is_main_process():
        _write_output(output_path, spec, result, store, images, questions, limit, log_samples)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        _print_wikiqa(result, model, method)
    summary = result["summary"]
    if summary["n"] and summary["n_failed"] == summary["n"]:
        if not is_main_process():  # the main rank reads the store and says why
            raise typer.Exit(1)
        hint = _failure_hint(store, result["run_id"], images)
        typer.echo(f"error: every question failed; {terminal_safe(hint)}", err=True)
        raise typer.Exit(1)


def _write_output(
    out_dir: Path, spec: RunSpec, result: dict, store: Path, images: Path,
    questions: Path | None, limit: int | None, log_samples: bool,
) -> None:  # fmt: skip
    """``--output-path``: the run's results JSON (and samples JSONL), as ``eval`` writes them;
    one error line (exit 1) if they cannot be written: the run is stored."""
    from vlmclf.analysis.wikiqa.files import write_wikiqa_files
    from vlmclf.data.imagewikiqa import load_imagewikiqa

    try:
        dataset = load_imagewikiqa(images, questions)
        write_wikiqa_files(out_dir, spec, result, store, dataset, limit=limit,
                           log_samples=log_samples)  # fmt: skip
    except (OSError, ValueError) as err:
        fail(f"--output-path {out_dir}: {err} (the run is stored: re-run to write the files)",
             code=1)  # fmt: skip


def _protocol_options(ctx: typer.Context, protocol: str, **given: object) -> dict[str, object]:
    """The options after the protocol's wikiqa settings: explicit options win. Only settings
    that differ from the clean protocol's (our defaults) are applied, so a clean run keeps the
    identity it had before protocols."""
    from vlmclf.paper.protocols import DEFAULT_PROTOCOL, resolve

    try:
        settings = resolve(protocol, "wikiqa")
    except ValueError as err:
        fail(str(err))
    defaults = resolve(DEFAULT_PROTOCOL, "wikiqa")
    chosen = dict(given)
    for name in given:
        typed = getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"
        if not typed and settings.get(name) not in (None, defaults.get(name)):
            chosen[name] = settings[name]
    return chosen


def _cot_template(model: str, method: str, protocol: str, cot: bool) -> str | None:
    """The family's chain-of-thought template when the protocol puts the cue after the
    assistant's turn marker (the paper's ``...ASSISTANT: Let's think step by step.``); None
    leaves the cue at the end of the question (our clean protocol, and API models in the
    paper's code)."""
    from vlmclf.paper.protocols import model_family, prompt_template, resolve

    if not cot or method != "generate":
        return None
    if resolve(protocol, "wikiqa").get("cot_placement") != "assistant prefix":
        return None
    family = model_family(model)
    own = resolve(protocol, "wikiqa", family)  # imagewikiqa/main.py's CoT prompts, where they
    if "prompt_template" in own:  # differ from main_results/main.py's (LLaVA-NeXT has one)
        return prompt_template(own, family, True, protocol)
    return prompt_template(resolve(protocol, "generate", family), family, True, protocol)


def _answer_marker(model: str, method: str, protocol: str) -> str | None:
    """The marker the protocol reads a generated answer after (the paper's code: the whole
    decoded output, then the text after the last ``ASSISTANT:``, ``Answer:`` or ``[/INST]``,
    so for LLaVA the letter is parsed from text that begins with the CoT cue); None: the
    new tokens alone (clean)."""
    from vlmclf.paper.protocols import model_family, resolve

    if method != "generate" or not resolve(protocol, "wikiqa").get("answer_read"):
        return None
    return resolve(protocol, "generate", model_family(model)).get("answer_marker")


_MISSING_IMAGE_WORDS = ("image not found", "no such file", "not an image", "cannot open")


def _failure_hint(store: Path, run_id: str, images: Path) -> str:
    """The commonest stored failure reason; the image folder is named only when it is the cause."""
    from collections import Counter

    from vlmclf.store import RunStore

    with RunStore(store) as runs:
        reasons = Counter(p.error or "" for p in runs.predictions(run_id) if not p.ok)
    if not reasons:
        return "see `vlmclf export` for the reasons"
    reason, count = reasons.most_common(1)[0]
    hint = f"the commonest reason ({count} of {sum(reasons.values())}): {reason[:300]}"
    if any(words in reason.lower() for words in _MISSING_IMAGE_WORDS):
        hint += f"; are the images under {images}?"
    return hint


def _print_wikiqa(result: dict, model: str, method: str) -> None:
    s = result["summary"]
    accuracy = "-" if s["accuracy"] is None else f"{100 * s['accuracy']:.1f}%"
    rule = "given a random letter" if s["unparsed_rule"] == "random-letter" else "counted wrong"
    protocol = result["spec"].get("protocol", "clean")
    typer.echo(
        f"run {result['run_id']}: {model} ({method}, protocol {protocol}) ImageWikiQA accuracy "
        f"{accuracy} on {s['n_ok']} questions; letters read by the {s.get('parser', 'robust')} "
        f"rule; unparsed {s['n_unparsed']} ({rule}), failed {s['n_failed']}"
    )
    answers = ", ".join(f"{k} {v}" for k, v in s["answer_distribution"].items())
    typer.echo("answers: " + terminal_safe(answers))
    for name, path in result["files"].items():
        typer.echo(f"{name}: {path}")


@wikiqa_app.command("build")
def wikiqa_build_command(
    model: Annotated[str, typer.Option(help="Chat model that writes the questions (any spec).")],
    classes: Annotated[str, typer.Option(help="Classes: a shipped list name or a JSON/text file.")],
    wiki: Annotated[Path, typer.Option(help="JSONL of {classname, text} Wikipedia articles.")],
    out_file: Annotated[
        Path | None, typer.Option(help="Where to write the kept questions (JSONL; required).")
    ] = None,
    filter_model: Annotated[
        str | None, typer.Option(help="Model for the with/without-name filter (default --model).")
    ] = None,
    per_class: Annotated[
        int, typer.Option(callback=at_least(1), help="Questions asked for per class.")
    ] = 5,
    seed: Annotated[
        int,
        typer.Option(
            callback=number_in(0, SEED_MAX), help="Seed for shuffling options and images."
        ),
    ] = 1234,
    images_dataset: Annotated[
        str | None, typer.Option(help="Pair questions with images of their class from it.")
    ] = None,
    data_root: Annotated[str | None, typer.Option(help="Where --images-dataset lives.")] = None,
    images_per_question: Annotated[
        int, typer.Option(callback=at_least(1), help="Images per question (paper: 10).")
    ] = 10,
    base_url: Annotated[str | None, typer.Option(help="API base URL (OpenAI-compatible).")] = None,
    concurrency: Annotated[
        int, typer.Option(callback=at_least(1), help="Parallel API requests.")
    ] = 4,
    device: Annotated[str, typer.Option(help=DEVICE_HELP + " Local models.")] = "auto",
    dtype: Annotated[str, typer.Option(help=DTYPE_HELP + " Each model its own.")] = "auto",
    report_dir: Annotated[Path | None, typer.Option(help="Folder for the report.")] = None,
    out: Annotated[Path | None, old_out_file()] = None,
    store: Annotated[Path, typer.Option(help="The run store.")] = DEFAULT_STORE,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Generate questions from Wikipedia text and keep those that need the object's identity."""
    from vlmclf.analysis.wikiqa.build import chat_from_model, read_wiki, run_wikiqa_build
    from vlmclf.data import load_class_names, load_dataset
    from vlmclf.run.loading import ModelOptions, load_any_model, resolve_dtype

    out = required("--out-file", renamed("--out", out, "--out-file", out_file))
    device, dtype = resolve_hardware(None, device, dtype)
    try:
        class_names = load_class_names(classes)
        articles = read_wiki(wiki)

        def load(spec: str) -> object:
            chosen = resolve_dtype(dtype, spec, device)
            options = ModelOptions(device, chosen, base_url=base_url, concurrency=concurrency)
            return load_any_model(spec, options)

        chat = chat_from_model(load(model))
        judge = chat_from_model(load(filter_model)) if filter_model else None
        images_by_class = None
        if images_dataset is not None:
            dataset = load_dataset(images_dataset, data_root=data_root)
            images_by_class = {}
            for example in dataset.examples:
                name = dataset.class_names[example.label]
                images_by_class.setdefault(name, []).append(example.source)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    spec = {"model": model, "filter_model": filter_model or model, "classes": classes,
            "wiki": str(wiki), "per_class": per_class, "seed": seed, "out": str(out)}  # fmt: skip
    result = run_wikiqa_build(
        chat, class_names, articles, out, store_path=store, spec=spec,
        out_dir=report_dir or out_dir_for("wikiqa-build", spec), filter_chat=judge,
        per_class=per_class, seed=seed, images_by_class=images_by_class,
        per_question=images_per_question,
    )  # fmt: skip
    if as_json:
        typer.echo(json.dumps(result))
        return
    counts = result["counts"]
    typer.echo(
        f"{counts['generated']} questions generated for {counts['classes']} classes, "
        f"{counts['kept']} kept ({counts['answered_with_name']} answered with the name, "
        f"{counts['not_without_name']} of them wrong without it); {result['n_records']} records"
    )
    for name, path in result["files"].items():
        typer.echo(f"{name}: {path}")
