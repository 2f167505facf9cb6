"""Run a RunSpec to completion: select examples, skip what is stored, classify, persist.

Every batch is written to the store as soon as it is classified, so a run killed at any moment
resumes where it stopped: the same content gives the same run id (``vlmclf.run.identity``, computed
without loading the model) and the examples already done are skipped. Images are decoded in a
thread pool a few batches ahead of the model.

Transient failures (out-of-memory, a model runtime error, an API that gave up) are stored but not
done: the next run of the same command retries them. On out-of-memory the batch shrinks to the
largest size that fits (``vlmclf.run.batching``) until one example alone does not fit.

Under torchrun (``vlmclf.run.distributed``) the main rank alone opens the store, starts the run and
finds what is pending; every rank classifies its share of whole batches and the main rank writes
each step's batches in the single-process order (``vlmclf.run.sharding``), so the stored result
is the same whatever the number of ranks, and a killed job resumes with any number.

The main rank holds the run's lease (``vlmclf.store.leases``) while it computes: a second process
that starts the same run stops at once naming the first, and a run whose holder died is shown
``interrupted``.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vlmclf.data import load_dataset
from vlmclf.data.choices import sample_choices
from vlmclf.data.types import Dataset, Example
from vlmclf.methods import check_label_set_size
from vlmclf.methods.base import LoadedExample, Method
from vlmclf.methods.prompts import (
    COT_MAX_NEW_TOKENS,
    DEFAULT_MAX_NEW_TOKENS,
    build_question,
    load_templates,
)
from vlmclf.models.prompt_formats import fill_template
from vlmclf.records import Prediction
from vlmclf.run.batching import BatchSizer, predict_with_fallback
from vlmclf.run.distributed import SharedResult, every_rank, from_main, is_main_process, on_main
from vlmclf.run.hard_choices import check_hard_choices, choice_identity, mine_choices
from vlmclf.run.identity import (
    content_identity,
    environment_changes,
    environment_facts,
    examples_fingerprint,
    identity_run_id,
    image_preprocessing_identity,
    prompt_format_for,
    resolved_prompts,
    weights_fingerprint,
)
from vlmclf.run.interrupts import is_interruption, mark_interrupted, sigterm_raises_terminated
from vlmclf.run.loading import ModelOptions, load_any_model
from vlmclf.run.prefetch import decoded_batches
from vlmclf.run.results import StoredPredictions, Summarizer
from vlmclf.run.sharding import BatchShare, batch_share, gather_in_steps, pending_examples
from vlmclf.spec import RunSpec, is_api_model
from vlmclf.store import Heartbeat, RunBusyError, RunStore
from vlmclf.store.leases import heartbeat_s
from vlmclf.terminal import terminal_safe

SUBSET_SEED = 0
PAPER_SUBSET_SEED = 1234
SAMPLES = ("default", "paper")


@dataclass
class RunConfig:
    """How much to run and where; none of it changes what a prediction is."""

    store_path: Path = Path("vlmclf-runs.sqlite")
    data_root: str | None = None
    classes: str | None = None
    limit: int | None = None
    sample: str = "default"
    batch_size: int = 8
    workers: int = 4
    progress: bool = True
    model: ModelOptions = field(default_factory=ModelOptions)
    verify_images: bool = False  # hash image bytes into the identity, not just size and mtime
    retry_failed: bool = False  # ask again about data failures too (transient ones always are)
    wait_for_holder: bool = False  # another live process computes this run: wait, then resume
    threads: int | None = None  # torch CPU threads (None: torch picks); environment torch_threads


@dataclass
class RunResult:
    run_id: str
    spec: RunSpec
    summary: dict
    class_names: list[str]
    stored: StoredPredictions
    """The run's predictions in the store, read on demand (in chunks, or as a list)."""
    warnings: list[str]
    newly_done: int
    elapsed_s: float
    loaded: list[Prediction] | None = field(default=None, repr=False)
    """The predictions once read (or given, e.g. re-scored by a sweep); None: not read yet."""

    @property
    def predictions(self) -> list[Prediction]:
        """The finalized predictions as one list, read from the store on first use: for small
        runs; a large one is read with ``stored.column_chunks()`` / ``prediction_chunks()``."""
        if self.loaded is None:
            self.loaded = self.stored.predictions()
        return self.loaded


def select_examples(dataset: Dataset, limit: int | None, sample: str = "default") -> list[Example]:
    """All examples, or a fixed pseudo-random subset of ``limit`` of them.

    ``default``: the subset comes from one permutation seeded independently of the run, so
    ``--limit 20`` is a prefix of ``--limit 100`` (a larger limit extends a run instead of
    starting over) and a folder sorted by class does not yield the first class only.
    ``paper``: the paper's code, ``random.seed(1234); random.shuffle(rows); rows[:limit]`` on
    the examples in reading order (a manifest's lines of the split), kept in shuffled order.
    """
    examples = list(dataset.examples)
    if sample not in SAMPLES:
        raise ValueError(f"--sample must be one of {', '.join(SAMPLES)}, got {sample!r}")
    if sample == "paper":
        random.Random(PAPER_SUBSET_SEED).shuffle(examples)  # = random.seed(1234); shuffle
        return examples if limit is None else examples[:limit]
    if limit is None or limit >= len(examples):
        return examples
    order = np.random.RandomState(SUBSET_SEED).permutation(len(examples))[:limit]
    return [examples[i] for i in sorted(order)]


def classify_batch(
    method: Method, items: list[LoadedExample | Prediction], sizer: BatchSizer | None = None
) -> list[Prediction]:
    """Predictions for a batch: failed decodes as they are, the rest from the method."""
    loaded = [item for item in items if isinstance(item, LoadedExample)]
    sizer = sizer or BatchSizer(len(loaded))
    predicted = iter(predict_with_fallback(method, loaded, sizer)) if loaded else iter(())
    return [next(predicted) if isinstance(item, LoadedExample) else item for item in items]


def _questions_sent(spec: RunSpec) -> list[str] | None:
    """The user text of a prompting method, with placeholders where it varies per example
    (the offered choices follow from the seed, K and class list, all in the identity)."""
    if spec.method in ("clip", "classifier"):  # no prompt: the image alone
        return None
    choices = None if spec.setting == "open" else ["{choices}"]
    cot_in_question = spec.cot and spec.prompt_template is None  # a template places CoT itself
    lettered = spec.answer_format == "mc"
    return [build_question(spec.prompt, choices, cot_in_question, lettered), "{question}"]


def _max_new_tokens(spec: RunSpec) -> int | None:
    if spec.method != "generate":
        return spec.max_new_tokens
    default = COT_MAX_NEW_TOKENS if spec.cot else DEFAULT_MAX_NEW_TOKENS
    return spec.max_new_tokens or default


def _server_url(spec: RunSpec, options: ModelOptions) -> str | None:
    if not is_api_model(spec.model) or options.base_url is None:
        return None
    from vlmclf.models.api.keys import strip_credentials

    return strip_credentials(options.base_url)


def run_identity(spec: RunSpec, config: RunConfig, class_names: list[str],
                 examples: Sequence[Example]) -> tuple[dict, dict]:  # fmt: skip
    """(identity, what to show of it): everything that can change a prediction, without
    loading the model. ``examples`` is the whole dataset, not the ``--limit`` subset (a prefix
    of any larger one), so a larger limit extends the run. The second dict keeps the resolved
    prompt text for `vlmclf results`."""
    questions = _questions_sent(spec)
    prompts = None
    if questions is not None and spec.prompt_template is not None:
        # a protocol's template replaces the family format (the image token aside)
        prompts = [fill_template(spec.prompt_template, "<image>", q) for q in questions]
    elif questions is not None:
        prompt_format = prompt_format_for(spec.model, config.model.trust_remote_code)
        prompts = resolved_prompts(questions, prompt_format)
    identity = content_identity(
        spec.canonical_json(),
        class_names=class_names,
        templates=load_templates(spec.templates) if spec.method == "clip" else None,
        prompts=prompts,
        max_new_tokens=_max_new_tokens(spec),
        preprocessing=image_preprocessing_identity(config.model.image_max_side),
        base_url=_server_url(spec, config.model),
        weights=weights_fingerprint(spec.model),
        examples=examples_fingerprint(examples, config.verify_images),
        choice_keys=_choice_keys(spec, examples),
        choices=choice_identity(spec),
    )
    shown = {
        "resolved_prompt": prompts[0] if prompts else None,
        "verify_images": config.verify_images,
        "data": data_location(spec, config),
    }
    return identity, shown


def _choice_keys(spec: RunSpec, examples: Sequence[Example]) -> str | None:
    """A hash of the seed keys of a run that offers labels, where a key is not the example id
    (a manifest's absolute paths): such runs drew from the ids before keys existed, so their
    identity changes with the rule, and any other run keeps its id."""
    offers = spec.setting == "closed" or spec.k is not None
    if not offers or all(example.key is None for example in examples):
        return None
    keys = json.dumps([example.seed_key for example in examples])
    return hashlib.sha256(keys.encode()).hexdigest()[:16]


def cpu_threads(requested: int | None) -> int:
    """Cap torch's CPU threads at ``requested`` (None: leave what torch picked); returns the
    count the run computes with, recorded beside it (never part of its identity)."""
    import torch

    if requested is not None:
        torch.set_num_threads(requested)
    return torch.get_num_threads()


def data_location(spec: RunSpec, config: RunConfig) -> dict[str, str | None]:
    """Where the examples were read from, as absolute paths: lets ``export`` list the dataset
    again for each example's image path (never part of the identity: the fingerprint is)."""

    def absolute(path: str | None) -> str | None:
        return str(Path(path).resolve()) if path and Path(path).exists() else path

    dataset = absolute(spec.dataset) if spec.dataset.endswith(".jsonl") else spec.dataset
    return {"dataset": dataset, "data_root": absolute(config.data_root),
            "classes": absolute(config.classes)}  # fmt: skip


ModelLoader = Callable[[str, ModelOptions], object]


def run(
    spec: RunSpec,
    config: RunConfig,
    build_method: Callable[[object, list[str], RunSpec], Method],
    on_warning: Callable[[str], None] | None = None,
    *,
    dataset: Dataset | None = None,
    load_model: ModelLoader = load_any_model,
    summarize_run: Summarizer | None = None,
) -> RunResult:
    """Classify every selected example not yet stored for this spec, then summarise the run.

    ``dataset`` replaces reading ``spec.dataset`` (for sets such as ImageWikiQA whose examples
    carry their own question), ``load_model`` lets a sweep keep one model across runs, and
    ``summarize_run`` replaces the summary with a task-specific one (given the whole prediction
    list: for small runs; by default the run is summarised from column chunks).
    """
    warn = on_warning or (
        lambda message: print(f"warning: {terminal_safe(message)}", file=sys.stderr)
    )
    if not is_main_process():  # under torchrun the main rank alone prints
        warn = _ignore
    cpu_threads(config.threads)  # on every rank, before any model or image work
    dataset, examples, class_names = every_rank(lambda: _selected(spec, config, dataset))
    hard = _hard_choices(spec, config, dataset, examples, class_names)
    # the whole dataset, not the --limit subset: a larger limit extends the run (a prefix)
    identity, shown = from_main(lambda: run_identity(spec, config, class_names, dataset.examples))
    run_id = identity_run_id(identity)
    started = time.perf_counter()
    # under torchrun the main rank alone opens the store, finds what is pending and writes
    with _store_on_main(config.store_path) as store, SharedResult() as shared:
        environment, todo, already = _start_on_main(
            store, spec, run_id, identity, class_names, examples, config, warn
        )

        def build() -> tuple[object, Method]:
            model = load_model(spec.model, config.model)
            method = build_method(model, class_names, spec)
            use_examples = getattr(method, "use_examples", None)
            if callable(use_examples):  # the paper's label stream runs over the whole split
                use_examples(dataset.examples, {example.id for example in examples})
            if hard is not None:
                method.hard_choices = hard  # type: ignore[attr-defined]
            return model, method

        def interrupted() -> None:
            store.finish_run(run_id, "interrupted", time.perf_counter() - started)

        try:
            with sigterm_raises_terminated(), _heartbeat_on_main(store, run_id) as beat:
                outcome = _execute(store, run_id, config, build, todo, already, warn, beat)
        except BaseException as err:
            if store is None:  # the main rank records how the run ended
                raise
            if is_interruption(err):  # Ctrl-C, SIGTERM, a full disk: committed rows resume
                mark_interrupted(interrupted, warn)
            else:
                store.finish_run(run_id, "failed", time.perf_counter() - started)
            raise
        if store is None:  # the main rank summarises the run; the others take its result
            return shared.receive()
        shared.expect()
        stored = StoredPredictions(
            config.store_path, run_id, spec, class_names, frozenset(e.id for e in examples)
        )
        summary = summarize_stored_run(store, stored, dataset.split, outcome, summarize_run)
        elapsed = time.perf_counter() - started
        meta = {"summary": summary, **shown, **environment}
        store.finish_run(run_id, "done", elapsed, meta=meta)
    result = RunResult(
        run_id, spec, summary, class_names, stored, outcome.warnings, outcome.written, elapsed
    )
    # the other ranks get no per-row copies (and may have no store on their node)
    return shared.send(result, replace(result, loaded=[]))


def _ignore(message: str) -> None:
    pass


def _selected(
    spec: RunSpec, config: RunConfig, dataset: Dataset | None
) -> tuple[Dataset, list[Example], list[str]]:
    """The dataset, its selected examples and class names; on every rank, which decodes its own
    share of the images."""
    if dataset is None:
        dataset = load_dataset(
            spec.dataset, data_root=config.data_root, split=spec.split, classes=config.classes
        )
    examples = select_examples(dataset, config.limit, config.sample)
    class_names = list(dataset.class_names)
    check_label_set_size(spec.k, class_names)  # before the store: a bad --k leaves no run behind
    return dataset, examples, class_names


def _hard_choices(
    spec: RunSpec, config: RunConfig, dataset: Dataset, examples: list[Example],
    class_names: list[str],
) -> Callable[[str, int], list[int]] | None:  # fmt: skip
    """The mined choice sets of ``--choices hard-*`` as a method's ``hard_choices`` (None for
    random choices); mined on the main rank (the choice model loaded only for what the cache
    lacks) and given to every rank."""
    if spec.choices == "random":
        return None
    check_hard_choices(spec, len(set(class_names)))
    mined = from_main(lambda: mine_choices(
        spec, class_names, dataset.name, dataset.split, examples,
        lambda choice_model: load_any_model(choice_model, config.model),
    ))  # fmt: skip
    assert spec.k is not None  # check_hard_choices

    def offer(example_id: str, label: int) -> list[int]:
        if mined.mode == "hard-image" and example_id not in mined.negatives:
            # the preflight's stand-in id (a prompt-length check), or an image that failed to
            # decode while mining, which fails again before any method sees it
            return sample_choices(label, class_names, spec.k, spec.order, spec.seed, example_id)
        return mined.offered(example_id, label, class_names, spec.k, spec.order, spec.seed)

    return offer


@contextmanager
def _store_on_main(path: Path) -> Iterator[RunStore | None]:
    """The store, open on the main rank; None on the others (which never touch the file)."""
    store = on_main(lambda: RunStore(path))
    if store is None:
        yield None
        return
    with store:
        yield store


@contextmanager
def _heartbeat_on_main(store: RunStore | None, run_id: str) -> Iterator[Heartbeat | None]:
    """On the main rank, the run's lease renewed in a thread while it computes (one logical
    owner per torchrun job); None on the other ranks."""
    if store is None:
        yield None
        return
    with Heartbeat(lambda: store.renew_lease(run_id)) as beat:
        yield beat


def _start_on_main(
    store: RunStore | None, spec: RunSpec, run_id: str, identity: dict, class_names: list[str],
    examples: list[Example], config: RunConfig, warn: Callable[[str], None],
) -> tuple[dict, list[Example], int]:  # fmt: skip
    """(environment meta, pending examples, how many are done). The main rank starts the run
    and reads what is done; every rank gets the same pending list, so a relaunch with another
    number of ranks resumes exactly what is left."""

    def start() -> tuple[dict, list[str], int]:
        assert store is not None
        environment = _check_environment(store, run_id, config, warn)
        start_run = lambda: store.start_run(  # noqa: E731
            run_id, spec.canonical_json(), class_names, n_total=len(examples), identity=identity
        )
        _start_or_wait(start_run, config.wait_for_holder, warn)
        done = store.done_ids(run_id, retry_data_failures=config.retry_failed)
        return environment, [e.id for e in examples if e.id not in done], len(done)

    environment, pending, already = from_main(start)
    return environment, every_rank(lambda: pending_examples(examples, pending)), already


def _start_or_wait(
    start_run: Callable[[], None], wait: bool, warn: Callable[[str], None]
) -> None:
    """Start the run; if another live process holds it, raise ``RunBusyError`` (naming it), or
    with ``wait`` poll until the holder is gone, then take over what it left."""
    told = False
    while True:
        try:
            start_run()
            return
        except RunBusyError as busy:
            if not wait:
                raise
            if not told:
                warn(f"{busy}; waiting (--wait)")
                told = True
            time.sleep(heartbeat_s())


def summarize_stored_run(
    store: RunStore,
    stored: StoredPredictions,
    split: str | None,
    outcome: _Outcome,
    summarize_run: Summarizer | None,
) -> dict:
    """The end of a run: its summary from the stored, finalized predictions, read in chunks
    (bounded memory at any size), plus the split and the API usage."""
    summary = stored.summary(store, summarize_run)
    summary["split"] = split
    if outcome.usage is not None:
        summary["usage"] = outcome.usage
    return summary


def _check_environment(
    store: RunStore, run_id: str, config: RunConfig, warn: Callable[[str], None]
) -> dict:
    """Meta recording the environment; one warning when a resume runs under a different one.
    The first session's facts stay under ``environment``, the latest under ``environment_last``."""
    now = environment_facts(config.model.device)
    record = store.get_run(run_id)
    before = (record.meta or {}).get("environment") if record is not None else None
    if before is None:
        return {"environment": now, "environment_last": now}
    changes = environment_changes(before, now)
    if changes:
        warn(f"run {run_id} resumes in a different environment ({'; '.join(changes)}); "
             "stored predictions were made under the first")  # fmt: skip
    return {"environment_last": now}


@dataclass
class _Outcome:
    written: int = 0
    warnings: list[str] = field(default_factory=list)
    usage: dict | None = None


def _execute(
    store: RunStore | None,
    run_id: str,
    config: RunConfig,
    build: Callable[[], tuple[object, Method]],
    todo: list[Example],
    already: int,
    warn: Callable[[str], None],
    beat: Heartbeat | None = None,
) -> _Outcome:
    """Load the model only when something is left to do, then classify what is left. Under
    torchrun a rank loads its model only if it has batches to run (the main rank always has),
    and a rank whose model fails to load stops the job with its error."""
    if not todo:
        return _Outcome()
    share = batch_share(todo, config.batch_size)
    model, method = every_rank(lambda: build() if share.items else (None, None))
    warnings = method.preflight() if method is not None else []
    for message in warnings:
        warn(message)
    written = _classify_all(store, run_id, method, share, config, len(todo) + already, already,
                            beat)  # fmt: skip
    usage = model.usage() if callable(getattr(model, "usage", None)) else None
    return _Outcome(written, warnings, usage)


def _classify_all(
    store: RunStore | None,
    run_id: str,
    method: Method | None,
    share: BatchShare[Example],
    config: RunConfig,
    total: int,
    already: int,
    beat: Heartbeat | None = None,
) -> int:
    """Classify this rank's ``share`` batch by batch, storing each batch before the next one
    starts: under torchrun the main rank (the one holding ``store``) writes every step's
    batches, all ranks' in batch order (``vlmclf.run.sharding``)."""
    failures = 0
    written = 0
    sizer = BatchSizer(config.batch_size)
    bar = tqdm(
        total=total,
        initial=already,
        unit="ex",
        dynamic_ncols=True,
        disable=not config.progress or store is None,
        file=sys.stderr,
        desc="classifying",
    )

    def write(step: list[list[Prediction]]) -> None:
        nonlocal written, failures
        assert store is not None  # only the main rank is given steps to write
        if beat is not None:
            beat.check()  # a process that lost the run's lease must not write on
        for predictions in step:
            written += store.add_predictions(run_id, predictions)
            failures += sum(not p.ok for p in predictions)
            bar.update(len(predictions))
        bar.set_postfix(failed=failures, refresh=False)

    with bar:
        batches = decoded_batches(share.items, config.batch_size, config.workers)
        results = (classify_batch(method, items, sizer) for items in batches)
        gather_in_steps(results, share.n_steps, write)
    return written
