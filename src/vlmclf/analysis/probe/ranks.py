"""One feature extraction shared by the ranks of a torchrun job.

The main rank alone computes the cache key (it stats the images and the weights, facts that may
differ between nodes), reads the cache and lists the chunks still missing (``ChunkedExtraction``).
Missing chunk i goes to rank i % N, which extracts the whole chunk on its own device, in the
batches one process would cut, and sends the chunk's content to the main rank; the main rank
writes the chunk files, so the cache needs to live on its node only, like the store. Ranks walk
the chunks in lockstep (``vlmclf.run.sharding.gather_in_steps``), one chunk per rank per step, so a
rank holds one chunk at a time and a killed job leaves whole chunks, which a relaunch with any N
(or a plain process) keeps. Every chunk is extracted by one rank exactly as a single process
extracts it, so the assembled file is bit for bit the single-process file (on the same hardware).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from vlmclf.analysis.probe.chunks import ChunkContent, ChunkFaults, ChunkRange
from vlmclf.analysis.probe.features import (
    ChunkedExtraction,
    FeatureKind,
    FeatureSet,
    extract_part,
    feature_cache_dir,
    make_key,
    progress_bar,
    read_cached_features,
)
from vlmclf.data.types import Example
from vlmclf.run.distributed import every_rank, from_main, on_main, place, shard
from vlmclf.run.sharding import gather_in_steps


@dataclass(frozen=True)
class ExtractionPlan:
    """What the main rank tells every rank: the chunks to extract (None: the file is cached)
    and a digest of the selected example ids, which every rank must share."""

    missing: list[ChunkRange] | None
    ids_digest: str


@dataclass
class FinishedChunk:
    """A chunk's content on its way to the main rank."""

    chunk: ChunkRange
    content: ChunkContent


def ids_digest(examples: Sequence[Example]) -> str:
    return hashlib.sha256("\n".join(e.id for e in examples).encode()).hexdigest()


def check_same_examples(examples: Sequence[Example], digest: str) -> None:
    if ids_digest(examples) != digest:
        raise ValueError(
            f"rank {place().rank} selected other examples than the main rank for the feature "
            "extraction; every node must see the same dataset"
        )


def cached_features_across_ranks(
    model_spec: str,
    dataset: str,
    split: str,
    examples: Sequence[Example],
    get_model: Callable[[], object],
    kind: FeatureKind,
    *,
    layer: int | None,
    question: str | None,
    dtype: str,
    cache_dir: Path | None,
    batch_size: int,
    workers: int,
    chunk_size: int,
    progress: bool,
    prompt_template: str | None = None,
    positions: str = "real",
) -> FeatureSet | None:
    """``cached_features`` for a torchrun job: the FeatureSet on the main rank, None on the
    others (which only extract). Every rank calls it with its own reading of the dataset."""
    held: dict[str, object] = {}  # the main rank's own objects, never broadcast

    def plan() -> ExtractionPlan:
        key = make_key(model_spec, dataset, split, examples, kind, layer, question, dtype,
                       prompt_template, positions)  # fmt: skip
        path = key.path(cache_dir or feature_cache_dir())
        held["cached"] = read_cached_features(path)
        extraction = ChunkedExtraction(key, path, examples, kind, question, layer, chunk_size)
        held["extraction"] = extraction
        missing = None if held["cached"] is not None else extraction.missing()
        return ExtractionPlan(missing, ids_digest(examples))

    planned = from_main(plan)
    every_rank(lambda: check_same_examples(examples, planned.ids_digest))
    if planned.missing is None:
        return held.get("cached")  # type: ignore[return-value]
    extraction = held.get("extraction")
    assert isinstance(extraction, ChunkedExtraction) or extraction is None
    here = place()
    mine = shard(planned.missing, here.rank, here.world_size)
    n_steps = -(-len(planned.missing) // here.world_size)
    model = every_rank(lambda: get_model() if mine else None)

    def extracted() -> Iterator[FinishedChunk]:
        for chunk in mine:
            content = extract_part(
                model, examples[chunk.start : chunk.end], kind, question=question, layer=layer,
                batch_size=batch_size, workers=workers, positions=positions,
            )  # fmt: skip
            yield FinishedChunk(chunk, content)

    n_missing = sum(chunk.size for chunk in planned.missing)
    writer = _ChunkWriter(extraction, len(examples), n_missing, progress and here.is_main)
    with writer:
        gather_in_steps(extracted(), n_steps, writer.write)
    return on_main(lambda: extraction.assemble(n_extracted=n_missing))  # type: ignore[union-attr]


class _ChunkWriter:
    """The main rank's side: write each step's chunks, count them for the progress bar."""

    def __init__(self, extraction: ChunkedExtraction | None, total: int, missing: int,
                 progress: bool) -> None:  # fmt: skip
        self.extraction = extraction
        self.faults = ChunkFaults()
        self.bar = progress_bar(total, total - missing, progress)
        if extraction is not None and missing and total - missing:
            print(f"features: resuming {extraction.path.name}: {total - missing} examples on "
                  f"disk, extracting {missing}", file=sys.stderr)  # fmt: skip

    def __enter__(self) -> _ChunkWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def write(self, step: list[FinishedChunk]) -> None:
        assert self.extraction is not None  # only the main rank is given steps to write
        for finished in step:
            self.extraction.write(finished.chunk, finished.content)
            self.bar.update(finished.chunk.size)
            self.faults.chunk_written()
