"""`vlmclf eval`: classify a dataset with a model and store every prediction.

The command's options fall into small groups (``EvalOptions``): what to ask, how to read a
likelihood, which data, which hardware, which API limits, where to write. The body turns them
into a RunSpec (what decides the result, after the protocol's defaults) and a RunConfig (how it
is computed), runs it and prints the summary.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Self, get_args, get_type_hints

import typer

from vlmclf.commands.common import (
    DEFAULT_STORE,
    DEVICE_HELP,
    DTYPE_HELP,
    SEED_MAX,
    at_least,
    batch_help,
    batch_size_or_auto,
    check_output_dir,
    fail,
    finite_number,
    number_in,
    resolve_batch,
    resolve_hardware,
)

if TYPE_CHECKING:
    from vlmclf.run.runner import RunConfig, RunResult
    from vlmclf.spec import RunSpec

CPU_BATCH = 8  # --batch-size auto on CPU and MPS


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


class ChoiceMode(StrEnum):
    random = "random"
    hard_text = "hard-text"
    hard_image = "hard-image"


class AnswerFormat(StrEnum):
    names = "names"
    mc = "mc"


class Aggregate(StrEnum):
    sum = "sum"
    mean = "mean"


class Calibration(StrEnum):
    none = "none"
    dataset_mean = "dataset_mean"


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
            "caltech101, fashion_mnist, imagefolder), wds:PATH_OR_GLOB or hf-dataset:PATH[:split]."
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
    choices: Annotated[
        ChoiceMode,
        typer.Option(help="How the --k offered labels are drawn: random, or the K-1 classes "
                     "--choice-model finds nearest the true name (hard-text) or scores highest "
                     "for the image (hard-image)."),
    ] = ChoiceMode.random,
    choice_model: Annotated[
        str | None, typer.Option(help="The CLIP that mines --choices hard-* (any CLIP spec).")
    ] = None,
    answer_format: Annotated[
        AnswerFormat,
        typer.Option("--format", help="Closed-world generation: names (the paper's list) or mc "
                     "(lettered options A, B, ...; the letter read by MMMU's rule)."),
    ] = AnswerFormat.names,
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
        str, typer.Option(callback=batch_size_or_auto, help=batch_help(CPU_BATCH))
    ] = "auto",
    workers: Annotated[
        int, typer.Option(callback=at_least(1), help="Threads decoding images ahead of the model.")
    ] = 4,
    threads: Annotated[
        int | None,
        typer.Option(
            callback=at_least(1),
            help="CPU threads torch computes with (default: what torch picks); recorded with "
            "the run.",
        ),
    ] = None,
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
            help="How answers map to labels: contain (the paper's), strict, exact, nli, "
            "zeroshot (the thesis's pipeline rule), embed."
        ),
    ] = "contain",
    nli_model: Annotated[
        str | None,
        typer.Option(help="--match nli/zeroshot: hf:<NLI checkpoint> or random:bart_nli."),
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
    wait: Annotated[
        bool,
        typer.Option("--wait", help="If another process is computing this run, wait for it."),
    ] = False,
    store: Annotated[
        Path, typer.Option("--store", help="SQLite file that keeps every run and prediction.")
    ] = DEFAULT_STORE,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of the table.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
    output_path: Annotated[
        Path | None,
        typer.Option(
            help="Also write results_<run_id>.json here: summary, identity, protocol, versions, "
            "git revision."
        ),
    ] = None,
    log_samples: Annotated[
        bool,
        typer.Option(
            "--log-samples",
            help="With --output-path: samples_<run_id>.jsonl, one line per example (image, "
            "label, prompt, answer, prediction, hit).",
        ),
    ] = False,
    log: Annotated[
        str | None,
        typer.Option(
            help="Also send the run's numbers to a tracker: tensorboard (event files under "
            "--output-path, default ./runs/tensorboard/<run_id>) or wandb (a run in "
            "$WANDB_PROJECT, default vlmclf; WANDB_MODE=offline keeps it local)."
        ),
    ] = None,
) -> None:
    """Classify a dataset with a model and store every prediction (re-running resumes)."""
    options = EvalOptions.from_context(ctx)
    spec, config = checked_plan(options)
    result = run_eval(spec, config, options)
    write_output_files(result, spec, config, options.output)
    print_result(result, spec, options.output)


# ----- the option groups -------------------------------------------------------------------


class _Group:
    """A group of the command's options, read by name from the parsed parameters."""

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Self:
        return cls(**{f.name: params[f.name] for f in fields(cls)})  # type: ignore[arg-type]


@dataclass(frozen=True)
class Question(_Group):
    """What the model is asked and how its answer is read."""

    model: str
    method: MethodName
    setting: Setting
    k: int | None
    order: Order
    choices: ChoiceMode
    choice_model: str | None
    answer_format: AnswerFormat
    prompt: str
    cot: bool
    protocol: str
    prompt_template: str | None
    templates: str
    max_new_tokens: int | None
    seed: int
    match: str
    nli_model: str | None
    embed_model: str | None
    answer_marker: str | None = None  # the protocol's: read the answer after it (paper's code)
    offer: str | None = None  # the protocol's draw of offered labels (paper: its global stream)


@dataclass(frozen=True)
class LikelihoodChoices(_Group):
    """How class-name likelihoods become a prediction, and the optional CFG sweep."""

    agg: Aggregate
    cfg: float | None
    calibration: Calibration
    answer_prefix: str | None
    cfg_sweep: bool
    val_split: str
    val_limit: int | None


@dataclass(frozen=True)
class DataChoices(_Group):
    """Which examples, from where, decoded how."""

    dataset: str
    split: str | None
    data_root: str | None
    classes: str | None
    limit: int | None
    sample: str
    decode_max_pixels: int | None
    verify_images: bool
    retry_failed: bool


@dataclass(frozen=True)
class Hardware(_Group):
    """Where the model runs; none of it changes a prediction but the dtype."""

    device: str
    dtype: str
    device_map: str | None
    trust_remote_code: bool
    batch_size: str
    workers: int
    threads: int | None


@dataclass(frozen=True)
class ApiLimits(_Group):
    """What an API model may be sent and spend."""

    base_url: str | None
    concurrency: int
    max_requests: int | None
    max_cost: float | None
    price_file: Path | None
    image_max_side: int | None


@dataclass(frozen=True)
class Output(_Group):
    store: Path
    as_json: bool
    progress: bool
    wait: bool  # for another process computing the same run (its lease)
    output_path: Path | None
    log_samples: bool
    log: str | None


@dataclass(frozen=True)
class EvalOptions:
    """Every option of ``vlmclf eval``, after the protocol's defaults (explicit options win)."""

    question: Question
    likelihood: LikelihoodChoices
    data: DataChoices
    hardware: Hardware
    api: ApiLimits
    output: Output

    @classmethod
    def from_context(cls, ctx: typer.Context) -> EvalOptions:
        return cls.from_params(ctx.params, _explicit_options(ctx))

    @classmethod
    def from_params(cls, given: dict[str, Any], explicit: set[str]) -> EvalOptions:
        """The options from every parameter's value (``explicit``: those the user gave, which
        win over the protocol's defaults); the CLI and ``vlmclf.evaluate`` both come here."""
        params = dict(given)
        _check_combinations(params)
        params.update(_protocol_options(params, explicit))
        for name, kind in (("setting", Setting), ("order", Order), ("calibration", Calibration),
                           ("choices", ChoiceMode), ("answer_format", AnswerFormat)):
            params[name] = kind(params[name])
        return cls(
            Question.from_params(params),
            LikelihoodChoices.from_params(params),
            DataChoices.from_params(params),
            Hardware.from_params(params),
            ApiLimits.from_params(params),
            Output.from_params(params),
        )


def _check_combinations(params: dict[str, Any]) -> None:
    """Options that cannot go together, refused before anything is resolved or loaded."""
    if params["k"] is not None and params["k"] < 2:
        fail(f"--k must be at least 2, got {params['k']}")
    if params["sample"] not in ("default", "paper"):
        fail(f"--sample must be 'default' or 'paper', got {params['sample']!r}")
    if params["answer_format"] == "mc" and (
        params["method"] is not MethodName.generate or params["setting"] != "closed"
    ):
        fail("--format mc asks with lettered options: use --method generate --setting closed")
    if params["setting"] is Setting.closed and params["method"] in (
        MethodName.clip, MethodName.classifier,
    ):  # fmt: skip
        fail(
            "--setting closed is for generative models; for CLIP and classifiers use --k to "
            "restrict the label set"
        )


PROTOCOL_OPTIONS = (
    "setting", "order", "prompt", "cot", "max_new_tokens", "templates", "dtype", "match",
    "answer_prefix", "cfg", "calibration", "prompt_template", "sample",
)  # fmt: skip


def _explicit_options(ctx: typer.Context) -> set[str]:
    """The options given on the command line (not left at their defaults)."""
    return {  # typer ships its own click: compare the source by name
        name
        for name in ctx.params
        if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"
    }


def _protocol_options(params: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
    """The protocol-governed option values after the protocol's defaults: explicit options win."""
    from vlmclf.paper.protocols import resolve_eval

    given = {name: params[name] for name in PROTOCOL_OPTIONS}
    given = {k: v.value if isinstance(v, StrEnum) else v for k, v in given.items()}
    try:
        return resolve_eval(params["protocol"], params["method"].value, params["model"], given,
                            explicit & set(PROTOCOL_OPTIONS))  # fmt: skip
    except ValueError as err:
        fail(str(err))


# ----- from options to a run ---------------------------------------------------------------


def checked_plan(options: EvalOptions) -> tuple[RunSpec, RunConfig]:
    """Every check that needs no model weights, then the plan: a bad argument, an unknown model,
    a missing key or an unreachable server stops here, before anything is stored or loaded."""
    from vlmclf.commands.eval_checks import check_before_running

    check_before_running(options.question)
    spec, config = run_plan(options)
    check_output_path(options.output)
    check_model_before_work(spec, config)
    return spec, config


def run_plan(options: EvalOptions) -> tuple[RunSpec, RunConfig]:
    """The RunSpec (what decides the result) and the RunConfig (how it is computed)."""
    from vlmclf.run.loading import ModelOptions
    from vlmclf.run.runner import RunConfig

    q, data, hw, api = options.question, options.data, options.hardware, options.api
    device, dtype = resolve_hardware(q.model, hw.device, hw.dtype)  # dtype is identity
    spec = run_spec(q, options.likelihood, data, dtype)
    model = ModelOptions(
        device=device, dtype=dtype, device_map=hw.device_map,
        trust_remote_code=hw.trust_remote_code, seed=q.seed, base_url=api.base_url,
        concurrency=api.concurrency, max_requests=api.max_requests, max_cost_usd=api.max_cost,
        image_max_side=api.image_max_side,
        price_file=None if api.price_file is None else str(api.price_file),
    )  # fmt: skip
    config = RunConfig(
        store_path=options.output.store, data_root=data.data_root, classes=data.classes,
        limit=data.limit, sample=data.sample,
        batch_size=resolve_batch(hw.batch_size, device, CPU_BATCH), workers=hw.workers,
        progress=options.output.progress, model=model, verify_images=data.verify_images,
        retry_failed=data.retry_failed, wait_for_holder=options.output.wait,
        threads=hw.threads,
    )  # fmt: skip
    return spec, config


def run_spec(q: Question, lik: LikelihoodChoices, data: DataChoices, dtype: str) -> RunSpec:
    from vlmclf.data.readers import parse_dataset_spec
    from vlmclf.spec import RunSpec

    name, spec_split = parse_dataset_spec(data.dataset)
    return RunSpec(
        model=q.model,
        dataset=name,
        split=data.split or spec_split or None,
        method=q.method.value,
        setting=q.setting.value,
        prompt=q.prompt,
        k=q.k,
        order=q.order.value,
        seed=q.seed,
        cot=q.cot,
        templates=q.templates,
        options=_likelihood_options(q.method, lik) | _answer_options(q),
        match=_match_id(q),
        max_new_tokens=q.max_new_tokens,
        dtype=dtype,
        protocol=q.protocol,
        prompt_template=q.prompt_template,
        choices=q.choices.value,
        choice_model=q.choice_model,
        answer_format=q.answer_format.value,
    )


def _match_id(q: Question) -> str:
    """The canonical answer-mapping id (generation only; 'contain' is the paper's rule)."""
    from vlmclf.methods.answer_mapping import match_id

    if q.match != "contain" and q.method is not MethodName.generate:
        fail("--match applies to --method generate (other methods score every class)")
    try:
        return match_id(q.match, nli_model=q.nli_model, embed_model=q.embed_model)
    except ValueError as err:
        fail(str(err))


def _answer_options(q: Question) -> dict[str, str]:
    """How a generated answer is read and the offered labels drawn, where the protocol does
    it the paper's way (runs that offer no labels keep their ids)."""
    chosen = {} if q.answer_marker is None else {"answer_marker": q.answer_marker}
    offers = q.setting.value == "closed" or (q.k is not None and q.method.value != "generate")
    if q.offer is not None and offers and q.order.value == "random":
        chosen["offer"] = q.offer
    return chosen


def _likelihood_options(method: MethodName, lik: LikelihoodChoices) -> dict[str, str | float]:
    """Likelihood settings that differ from the defaults (so default runs keep their ids)."""
    if method is not MethodName.likelihood:
        if lik.agg is not Aggregate.sum or lik.cfg is not None or (
            lik.calibration is not Calibration.none
        ):  # fmt: skip
            fail("--agg, --cfg and --calibration apply to --method likelihood")
        if lik.cfg_sweep:
            fail("--cfg-sweep applies to --method likelihood")
        return {}
    chosen = {
        "agg": lik.agg.value if lik.agg is not Aggregate.sum else None,
        "cfg": lik.cfg,
        "calibration": lik.calibration.value if lik.calibration is not Calibration.none else None,
        "answer_prefix": lik.answer_prefix,
    }
    return {key: value for key, value in chosen.items() if value is not None}


def run_eval(spec: RunSpec, config: RunConfig, options: EvalOptions) -> RunResult:
    """The run (or the CFG sweep) under the chosen image decoding, with every expected failure
    as a one-line error."""
    from vlmclf.data.images import decode_settings_for, decoding_with
    from vlmclf.methods import make_method
    from vlmclf.models.api import ApiError
    from vlmclf.run.runner import run

    lik = options.likelihood
    try:
        with decoding_with(decode_settings_for(options.data.decode_max_pixels)):
            if lik.cfg_sweep:
                from vlmclf.analysis.sweep.cfg import run_cfg_sweep

                return run_cfg_sweep(spec, config, val_split=lik.val_split,
                                     val_limit=lik.val_limit)  # fmt: skip
            return run(spec, config, make_method)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    except ApiError as err:  # a missing key, a 401, an unknown model, a spent budget
        fail(f"{err} (answers received so far are stored; re-running resumes)", code=1)


def check_model_before_work(spec: RunSpec, config: RunConfig) -> None:
    """A missing API key or an API server that does not answer: one line and exit 2 in
    seconds, before the store is opened (nothing stored)."""
    from vlmclf.commands.eval_checks import check_model_answers

    check_model_answers(spec.model, config.model)


def check_output_path(output: Output) -> None:
    """``--output-path`` usable before any work (a folder we can write in), ``--log-samples``
    only with it, and the ``--log`` tracker installed."""
    if output.log is not None:
        from vlmclf.run.trackers import check_tracker

        try:
            check_tracker(output.log)
        except ValueError as err:
            fail(str(err))
    check_output_dir(output.output_path, output.log_samples)


def write_output_files(
    result: RunResult, spec: RunSpec, config: RunConfig, output: Output
) -> list[Path]:
    """The run's results JSON (and samples JSONL) under ``--output-path``, and its numbers sent
    to the ``--log`` tracker; the run is stored whatever happens here."""
    from vlmclf.report.summary import summary_json
    from vlmclf.run.run_files import write_run_files
    from vlmclf.run.trackers import log_run

    summary = summary_json(result.run_id, spec, result.summary, str(output.store))
    written: list[Path] = []
    try:
        if output.output_path is not None:
            written = write_run_files(output.output_path, summary, result.stored,
                                      data_root=config.data_root, classes=config.classes,
                                      log_samples=output.log_samples)  # fmt: skip
    except (OSError, ValueError) as err:
        fail(f"{output.output_path}: {err} (the run is stored: re-run to write the files)", code=1)
    if output.log is not None:
        try:
            written.append(log_run(output.log, output.output_path or Path("runs"), summary,
                                   result.stored))  # fmt: skip
        except (OSError, ValueError) as err:
            fail(f"--log {output.log}: {err} (the run is stored: re-run to send it)", code=1)
    return written


def print_result(result: RunResult, spec: RunSpec, output: Output) -> None:
    """The summary (table or JSON) on stdout; what is incomplete or failed on stderr."""
    from vlmclf.report.summary import summary_json, summary_table

    store = str(output.store)
    if output.as_json:
        typer.echo(json.dumps(summary_json(result.run_id, spec, result.summary, store)))
    else:
        typer.echo(summary_table(result.run_id, spec, result.summary, store))
    summary = result.summary
    if summary.get("n_transient"):
        typer.echo(
            f"incomplete: {summary['n_transient']} transient failures; re-run the same "
            "command to retry them (the headline is provisional)",
            err=True,
        )
    if summary["n"] > 0 and summary["n_failed"] == summary["n"]:
        typer.echo("error: every example failed; see `vlmclf export` for the reasons", err=True)
        raise typer.Exit(1)


# ----- the same options from Python (``vlmclf.evaluate``) -----------------------------------

PRINT_ONLY = frozenset({"as_json"})
"""Options that only shape the CLI's printout: the Python API returns the summary instead."""


@dataclass(frozen=True)
class OptionSpec:
    """One option of ``vlmclf eval`` as its signature defines it: the CLI and the API share it."""

    name: str
    kind: Any
    default: Any
    check: Callable[[Any], Any] | None

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty


def eval_option_specs() -> dict[str, OptionSpec]:
    """Every option of ``eval_command``: its type, default and check, read from the command's
    own signature (the one definition of the options and their defaults)."""
    hints = get_type_hints(eval_command, include_extras=True)
    specs = {}
    for name, param in inspect.signature(eval_command).parameters.items():
        if name == "ctx" or name in PRINT_ONLY:
            continue
        kind, *extras = get_args(hints[name])
        info = next((e for e in extras if isinstance(e, typer.models.OptionInfo)), None)
        specs[name] = OptionSpec(name, kind, param.default, info.callback if info else None)
    return specs


def eval_params(given: dict[str, Any]) -> dict[str, Any]:
    """Every option's value for a run asked from Python: ``given`` checked and converted the way
    the CLI parses it, the rest at the CLI's defaults. Errors are ``fail``'s one line."""
    specs = eval_option_specs()
    unknown = sorted(set(given) - set(specs))
    if unknown:
        raise TypeError(_unknown_options_message(unknown, list(specs)))
    missing = [name for name, spec in specs.items() if spec.required and name not in given]
    if missing:
        raise TypeError(f"evaluate() needs {', '.join(missing)}")
    params = {name: _option_value(spec, given[name]) if name in given else spec.default
              for name, spec in specs.items()}  # fmt: skip
    return params | {name: False for name in PRINT_ONLY}


def _unknown_options_message(unknown: list[str], known: list[str]) -> str:
    import difflib

    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return f"evaluate() got unknown option {', '.join(hints)}"


def _option_value(spec: OptionSpec, value: Any) -> Any:
    """``value`` as the CLI would have parsed it: enums from their names, paths from strings,
    then the option's own check (a range, ``auto`` or a number)."""
    kind = next((k for k in (spec.kind, *get_args(spec.kind)) if isinstance(k, type)), None)
    if value is not None and kind is not None:
        if issubclass(kind, StrEnum) and not isinstance(value, kind):
            choices = ", ".join(member.value for member in kind)
            if value not in {member.value for member in kind}:
                fail(f"{spec.name}: must be one of {choices}, got {value!r}")
            value = kind(value)
        elif issubclass(kind, Path):
            value = Path(value)
        elif kind is str and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # batch_size=16 as --batch-size 16
    if spec.check is not None:
        try:
            value = spec.check(value)
        except typer.BadParameter as err:
            fail(f"{spec.name}: {err.message}")
    return value
