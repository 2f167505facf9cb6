"""Run a RunSpec to completion: select examples, skip what is stored, classify, persist.

Every batch is written to the store as soon as it is classified, so a run killed at any moment
resumes where it stopped: the same spec gives the same run id and the examples already stored
are skipped. Images are decoded in a thread pool a few batches ahead of the model.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vlmclf.data import load_dataset
from vlmclf.data.types import BadExampleError, Dataset, Example
from vlmclf.loading import ModelOptions, load_any_model
from vlmclf.methods import finalize_predictions
from vlmclf.methods.base import LoadedExample, Method
from vlmclf.metrics import summarize
from vlmclf.records import Prediction
from vlmclf.spec import RunSpec
from vlmclf.store import RunStore

PREFETCH_BATCHES = 2
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


@dataclass
class RunResult:
    run_id: str
    spec: RunSpec
    summary: dict
    class_names: list[str]
    predictions: list[Prediction]
    warnings: list[str]
    newly_done: int
    elapsed_s: float


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


def decode(example: Example) -> LoadedExample | Prediction:
    """The decoded image, or a failed Prediction saying why it could not be used."""
    try:
        return LoadedExample(example, example.load())
    except BadExampleError as err:
        return Prediction.failed(example.id, example.label, str(err))
    except Exception as err:  # a reader bug must not cost the run: record it like bad data
        return Prediction.failed(
            example.id, example.label, f"{example.source}: {type(err).__name__}: {err}"
        )


def batched(items: Sequence[Example], size: int) -> Iterator[list[Example]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def decoded_batches(
    examples: Sequence[Example], batch_size: int, workers: int
) -> Iterator[list[LoadedExample | Prediction]]:
    """Batches of decoded examples, decoding up to PREFETCH_BATCHES ahead in worker threads."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: list[list[Future]] = []
        batches = batched(examples, batch_size)
        for batch in batches:
            pending.append([pool.submit(decode, e) for e in batch])
            if len(pending) > PREFETCH_BATCHES:
                yield [f.result() for f in pending.pop(0)]
        while pending:
            yield [f.result() for f in pending.pop(0)]


def classify_batch(method: Method, items: list[LoadedExample | Prediction]) -> list[Prediction]:
    """Predictions for a batch: failed decodes as they are, the rest from the method."""
    loaded = [item for item in items if isinstance(item, LoadedExample)]
    predicted = iter(method.predict(loaded)) if loaded else iter(())
    return [next(predicted) if isinstance(item, LoadedExample) else item for item in items]


ModelLoader = Callable[[str, ModelOptions], object]
Summarizer = Callable[[list[Prediction], list[str]], dict]


def run(
    spec: RunSpec,
    config: RunConfig,
    build_method: Callable[[object, list[str], RunSpec], Method],
    on_warning: Callable[[str], None] | None = None,
    *,
    dataset: Dataset | None = None,
    load_model: ModelLoader = load_any_model,
    summarize_run: Summarizer = summarize,
) -> RunResult:
    """Classify every selected example not yet stored for this spec, then summarise the run.

    ``dataset`` replaces reading ``spec.dataset`` (for sets such as ImageWikiQA whose examples
    carry their own question), ``load_model`` lets a sweep keep one model across runs, and
    ``summarize_run`` adds task-specific figures to the summary.
    """
    warn = on_warning or (lambda message: print(f"warning: {message}", file=sys.stderr))
    if dataset is None:
        dataset = load_dataset(
            spec.dataset, data_root=config.data_root, split=spec.split, classes=config.classes
        )
    examples = select_examples(dataset, config.limit, config.sample)
    class_names = list(dataset.class_names)
    started = time.perf_counter()
    with RunStore(config.store_path) as store:
        store.start_run(spec.run_id, spec.canonical_json(), class_names, n_total=len(examples))
        done = store.done_ids(spec.run_id)
        todo = [e for e in examples if e.id not in done]
        try:

            def build() -> tuple[object, Method]:
                model = load_model(spec.model, config.model)
                return model, build_method(model, class_names, spec)

            outcome = _execute(store, spec.run_id, config, build, todo, len(done), warn)
        except KeyboardInterrupt:
            store.finish_run(spec.run_id, "interrupted", time.perf_counter() - started)
            raise
        except BaseException:
            store.finish_run(spec.run_id, "failed", time.perf_counter() - started)
            raise
        selected = {e.id for e in examples}
        predictions = [p for p in store.predictions(spec.run_id) if p.example_id in selected]
        predictions = finalize_predictions(spec, predictions, class_names)
        summary = summarize_run(predictions, class_names)
        summary["split"] = dataset.split
        if outcome.usage is not None:
            summary["usage"] = outcome.usage
        elapsed = time.perf_counter() - started
        store.finish_run(spec.run_id, "done", elapsed, meta={"summary": summary})
    return RunResult(
        spec.run_id,
        spec,
        summary,
        class_names,
        predictions,
        outcome.warnings,
        outcome.written,
        elapsed,
    )


@dataclass
class _Outcome:
    written: int = 0
    warnings: list[str] = field(default_factory=list)
    usage: dict | None = None


def _execute(
    store: RunStore,
    run_id: str,
    config: RunConfig,
    build: Callable[[], tuple[object, Method]],
    todo: list[Example],
    already: int,
    warn: Callable[[str], None],
) -> _Outcome:
    """Load the model only when something is left to do, then classify what is left."""
    if not todo:
        return _Outcome()
    model, method = build()
    warnings = method.preflight()
    for message in warnings:
        warn(message)
    written = _classify_all(store, run_id, method, todo, config, already)
    usage = model.usage() if callable(getattr(model, "usage", None)) else None
    return _Outcome(written, warnings, usage)


def _classify_all(
    store: RunStore,
    run_id: str,
    method: Method,
    todo: list[Example],
    config: RunConfig,
    already: int,
) -> int:
    """Classify ``todo`` batch by batch, storing each batch before the next one starts."""
    failures = 0
    written = 0
    bar = tqdm(
        total=len(todo) + already,
        initial=already,
        unit="ex",
        dynamic_ncols=True,
        disable=not config.progress,
        file=sys.stderr,
        desc="classifying",
    )
    with bar:
        for items in decoded_batches(todo, config.batch_size, config.workers):
            predictions = classify_batch(method, items)
            written += store.add_predictions(run_id, predictions)
            failures += sum(not p.ok for p in predictions)
            bar.update(len(predictions))
            bar.set_postfix(failed=failures, refresh=False)
    return written
