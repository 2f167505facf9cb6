"""Image features for probing, extracted once per (model, layer, prompt, dataset, split, examples).

A VLM gives the hidden state of one language-model layer for the paper's prompt, at the last
token and averaged over all tokens (``hidden_features``); a CLIP-style encoder gives its image
embedding (``encode_images``). Extraction costs a forward pass per image, so the result is kept
on disk as one safetensors file per key under ``feature_cache_dir()`` and read back through
``safe_open`` (the file is memory-mapped; only the tensors asked for are copied out). Images
that cannot be decoded are skipped, and their ids and reasons are kept in the file.

The file is built from chunks of fixed example-index ranges written as extraction goes
(``chunks.py``): an extraction killed part-way resumes from its finished chunks.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from vlmclf.analysis.probe.chunks import (
    DEFAULT_CHUNK_EXAMPLES,
    LABELS,
    ChunkContent,
    ChunkFaults,
    ChunkRange,
    assemble_chunks,
    finished_chunks,
    partial_folder,
    plan_chunks,
    remove_partial,
    write_chunk,
)
from vlmclf.cache import cache_root
from vlmclf.data.types import Example
from vlmclf.methods.base import LoadedExample
from vlmclf.models.base import ImageTextEncoder
from vlmclf.models.prompt_formats import fill_template
from vlmclf.records import Prediction
from vlmclf.run.identity import (
    examples_fingerprint,
    half_precision_identity,
    image_preprocessing_identity,
    prompt_format_for,
    weights_fingerprint,
)

FeatureKind = Literal["hidden", "image_embedding"]
HIDDEN_POOLINGS = ("last_token", "mean")
EMBEDDING_POOLING = "embedding"
CACHE_FORMAT = 3
"""Bump when the file layout or the meaning of a cached tensor changes: old files are ignored.
3: the model's dtype is part of the key; files are joined from resumable chunks."""
_LABELS = LABELS


def feature_cache_dir() -> Path:
    """``$VLMCLF_CACHE_DIR/features``, else ``~/.cache/vlmclf/features``."""
    return cache_root() / "features"


@dataclass(frozen=True)
class FeatureKey:
    """Everything that decides a cached feature file's content."""

    model: str
    weights: str | None
    kind: FeatureKind
    layer: int | None
    question: str | None
    dataset: str
    split: str
    examples: str  # identity.examples_fingerprint: ids, paths, labels, sizes, mtimes
    poolings: tuple[str, ...]
    preprocessing: str = "{}"  # identity.image_preprocessing_identity, as JSON
    dtype: str = "float32"  # the model's compute dtype: bf16 features are not float32 features
    positions: str = "real"  # hf.FEATURE_POSITIONS: the mean over real tokens or all positions

    def as_dict(self) -> dict[str, Any]:
        fields = {
            **self.__dict__, "poolings": list(self.poolings), "format": CACHE_FORMAT,
            **half_precision_identity(self.dtype),
        }  # fmt: skip
        if self.positions == "real":  # the files written before the paper's pooling keep keys
            del fields["positions"]
        return fields

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:20]

    def path(self, root: Path) -> Path:
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.model)[:80]
        return root / slug / f"{self.dataset_slug()}-{self.digest()}.safetensors"

    def dataset_slug(self) -> str:
        name = Path(self.dataset).stem if self.dataset.endswith(".jsonl") else self.dataset
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{name}-{self.split}")[:60]


@dataclass
class FeatureSet:
    """Features of the examples that decoded, in selection order, with their labels."""

    ids: list[str]
    labels: torch.Tensor
    features: dict[str, torch.Tensor]
    failures: list[dict[str, str]] = field(default_factory=list)
    path: Path | None = None
    from_cache: bool = False
    n_extracted: int = 0
    """Examples sent through the model for this set (0 when it was read from the cache)."""

    @property
    def n_failed(self) -> int:
        return len(self.failures)

    @property
    def dim(self) -> int:
        return int(next(iter(self.features.values())).shape[1])


def make_key(
    model_spec: str,
    dataset: str,
    split: str,
    examples: Sequence[Example],
    kind: FeatureKind,
    layer: int | None = None,
    question: str | None = None,
    dtype: str = "float32",
    prompt_template: str | None = None,
    positions: str = "real",
) -> FeatureKey:
    """The key of a feature file; a ``prompt_template`` (a protocol's, ``{image}`` and
    ``{question}``) replaces the family's chat format in the text keyed on."""
    poolings = HIDDEN_POOLINGS if kind == "hidden" else (EMBEDDING_POOLING,)
    if kind == "image_embedding":
        layer, question, positions = None, None, "real"
    elif question is not None and prompt_template is not None:
        question = fill_template(prompt_template, "{image}", question)
    elif question is not None:  # key on the text sent, after the family's chat template
        prompt_format = prompt_format_for(model_spec)
        question = question if prompt_format is None else prompt_format(question)
    return FeatureKey(
        model=model_spec, weights=weights_fingerprint(model_spec), kind=kind, layer=layer,
        question=question, dataset=dataset, split=split, examples=examples_fingerprint(examples),
        poolings=poolings,
        preprocessing=json.dumps(image_preprocessing_identity(None), sort_keys=True), dtype=dtype,
        positions=positions,
    )  # fmt: skip


# ------------------------------------------------------------------ extraction


def features_of_batch(
    model: object, images: list, kind: FeatureKind, question: str | None, layer: int | None,
    positions: str = "real",
) -> dict[str, torch.Tensor]:  # fmt: skip
    """One batch through the model: both poolings of a hidden layer, or CLIP image embeddings."""
    if kind == "image_embedding":
        if not isinstance(model, ImageTextEncoder):
            raise ValueError(
                f"{getattr(model, 'name', model)} is not a CLIP-style encoder (no encode_images)"
            )
        return {EMBEDDING_POOLING: model.encode_images(images).float().cpu()}
    hidden = getattr(model, "hidden_features", None)
    if not callable(hidden):
        raise ValueError(
            f"{getattr(model, 'name', model)} exposes no hidden states: probing needs an "
            "open-weight VLM (hf:, random:, organism:vlm)"
        )
    options = {} if positions == "real" else {"positions": positions}
    out = hidden(images, [question or ""] * len(images), layer if layer is not None else -1,
                 **options)  # fmt: skip
    return {"last_token": out.last_token.float().cpu(), "mean": out.mean.float().cpu()}


def extract_part(
    model: object,
    examples: Sequence[Example],
    kind: FeatureKind,
    *,
    question: str | None = None,
    layer: int | None = None,
    batch_size: int = 16,
    workers: int = 2,
    on_batch: Callable[[int], None] | None = None,
    positions: str = "real",
) -> ChunkContent:
    """Run the model over ``examples`` (decoded ahead in threads); undecodable ones are skipped
    and listed in ``failures`` with the reason. ``on_batch`` is told how many were done."""
    from vlmclf.run.prefetch import decoded_batches

    ids: list[str] = []
    labels: list[int] = []
    parts: dict[str, list[torch.Tensor]] = {}
    failures: list[dict[str, str]] = []
    for items in decoded_batches(examples, batch_size, workers):
        loaded = [item for item in items if isinstance(item, LoadedExample)]
        failures += [
            {"id": item.example_id, "reason": item.error or "unknown"}
            for item in items
            if isinstance(item, Prediction)
        ]
        if loaded:
            images = [i.image for i in loaded]
            batch = features_of_batch(model, images, kind, question, layer, positions)
            for name, tensor in batch.items():
                parts.setdefault(name, []).append(tensor)
            ids += [item.example.id for item in loaded]
            labels += [item.example.label for item in loaded]
        if on_batch is not None:
            on_batch(len(items))
    features = {name: torch.cat(chunks).contiguous() for name, chunks in parts.items()}
    return ChunkContent(ids, torch.tensor(labels, dtype=torch.int64), features, failures)


def extract_features(
    model: object,
    examples: Sequence[Example],
    kind: FeatureKind,
    *,
    question: str | None = None,
    layer: int | None = None,
    batch_size: int = 16,
    workers: int = 2,
    progress: bool = False,
) -> FeatureSet:
    """All of ``examples`` in memory at once, no cache (``cached_features`` writes chunks)."""
    with progress_bar(len(examples), 0, progress) as bar:
        part = extract_part(
            model, examples, kind, question=question, layer=layer, batch_size=batch_size,
            workers=workers, on_batch=bar.update,
        )  # fmt: skip
    _require_some(part.ids, part.failures)
    return FeatureSet(part.ids, part.labels, part.features, part.failures,
                      n_extracted=len(examples))  # fmt: skip


def progress_bar(total: int, done: int, progress: bool) -> tqdm:
    return tqdm(total=total, initial=done, unit="img", desc="features", file=sys.stderr,
                disable=not progress, dynamic_ncols=True)  # fmt: skip


def _require_some(ids: list[str], failures: list[dict[str, str]]) -> None:
    if not ids:
        reasons = "; ".join(f["reason"] for f in failures[:3])
        raise ValueError(f"no image could be decoded ({len(failures)} failed: {reasons})")


# ------------------------------------------------------------------ the disk cache


def save_feature_file(path: Path, features: FeatureSet, key: FeatureKey) -> None:
    """Write atomically (temporary sibling, then rename): a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.contiguous() for name, t in features.features.items()}
    tensors[_LABELS] = features.labels.contiguous()
    metadata = {
        "key": json.dumps(key.as_dict(), sort_keys=True),
        "ids": json.dumps(features.ids),
        "failures": json.dumps(features.failures),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_feature_file(path: Path, poolings: Sequence[str] | None = None) -> FeatureSet:
    """Read a cached file through ``safe_open`` (memory-mapped); ``poolings`` limits what is
    copied out (default: all)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        names = [n for n in handle.keys() if n != _LABELS]  # noqa: SIM118 - not a dict
        wanted = list(poolings) if poolings is not None else names
        missing = [n for n in wanted if n not in names]
        if missing:
            raise ValueError(f"{path}: no features named {missing} (has {names})")
        features = {name: handle.get_tensor(name) for name in wanted}
        labels = handle.get_tensor(_LABELS)
    try:
        ids = json.loads(metadata["ids"])
        failures = json.loads(metadata.get("failures", "[]"))
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a vlmclf feature file ({err})") from err
    return FeatureSet(ids, labels, features, failures, path=path, from_cache=True)


def read_cached_features(path: Path) -> FeatureSet | None:
    """The cache file's features; None when there is none or it cannot be read (a warning)."""
    if not path.is_file():
        return None
    try:
        return load_feature_file(path)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        print(f"warning: unreadable feature cache {path}, extracting again: {err}",
              file=sys.stderr)  # fmt: skip
        return None


def cached_features(
    model_spec: str,
    dataset: str,
    split: str,
    examples: Sequence[Example],
    get_model: Callable[[], object],
    kind: FeatureKind,
    *,
    layer: int | None = None,
    question: str | None = None,
    dtype: str = "float32",
    cache_dir: Path | None = None,
    batch_size: int = 16,
    workers: int = 2,
    chunk_size: int = DEFAULT_CHUNK_EXAMPLES,
    progress: bool = False,
    prompt_template: str | None = None,
    positions: str = "real",
) -> FeatureSet:
    """Features from the cache, or extracted with ``get_model()`` (called only on a miss) and
    written to the cache. A file that cannot be read is extracted again and replaced.
    ``prompt_template`` must be the one the model got (it keys the file, it is not applied)."""
    key = make_key(model_spec, dataset, split, examples, kind, layer, question, dtype,
                   prompt_template, positions)  # fmt: skip
    path = key.path(cache_dir or feature_cache_dir())
    cached = read_cached_features(path)
    if cached is not None:
        return cached
    extraction = ChunkedExtraction(key, path, examples, kind, question, layer, chunk_size)
    return extraction.run(get_model, batch_size=batch_size, workers=workers, progress=progress)


@dataclass
class ChunkedExtraction:
    """One key's extraction as fixed index-range chunks (``chunks.py``): the chunks already on
    disk are kept, the missing ones extracted and written one at a time, then all are joined
    into the cache file.

    The steps are separate so that the ranks of a torchrun job can share one extraction
    (``ranks.py``): the main rank lists ``missing()``, each rank extracts its share of the
    ranges, the main rank ``write``s every chunk it is sent and ``assemble``s them at the end.
    """

    key: FeatureKey
    path: Path
    examples: Sequence[Example]
    kind: FeatureKind
    question: str | None
    layer: int | None
    chunk_size: int = DEFAULT_CHUNK_EXAMPLES

    @property
    def folder(self) -> Path:
        return partial_folder(self.path)

    def planned(self) -> list[ChunkRange]:
        return plan_chunks(len(self.examples), self.chunk_size)

    def missing(self) -> list[ChunkRange]:
        """The planned chunks with no valid file on disk, in index order."""
        done = finished_chunks(self.folder, self.planned(), self.key.digest())
        return [chunk for chunk in self.planned() if chunk not in done]

    def extract(
        self, model: object, chunks: Sequence[ChunkRange], *, batch_size: int, workers: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:  # fmt: skip
        """Extract and write ``chunks``, one at a time (only the current one is in memory)."""
        faults = ChunkFaults()
        for chunk in chunks:
            part = extract_part(
                model, self.examples[chunk.start : chunk.end], self.kind, question=self.question,
                layer=self.layer, batch_size=batch_size, workers=workers, on_batch=on_batch,
                positions=self.key.positions,
            )  # fmt: skip
            self.write(chunk, part)
            del part
            faults.chunk_written()

    def write(self, chunk: ChunkRange, content: ChunkContent) -> None:
        """Write one finished chunk (made here or sent by another rank)."""
        write_chunk(self.folder, chunk, content, self.key.digest())

    def assemble(self, n_extracted: int = 0) -> FeatureSet:
        """Join every planned chunk into the cache file and remove the chunks."""
        ids, labels, features, failures = assemble_chunks(self.folder, self.planned())
        if not ids:
            remove_partial(self.folder)  # nothing decoded: nothing worth resuming either
        _require_some(ids, failures)
        result = FeatureSet(ids, labels, features, failures, n_extracted=n_extracted)
        save_feature_file(self.path, result, self.key)
        remove_partial(self.folder)
        result.path = self.path
        return result

    def run(
        self, get_model: Callable[[], object], *, batch_size: int, workers: int, progress: bool
    ) -> FeatureSet:
        """The whole extraction in this process: resume, extract what is missing, assemble."""
        missing = self.missing()
        n_missing = sum(chunk.size for chunk in missing)
        n_on_disk = len(self.examples) - n_missing
        if missing and n_on_disk:
            print(f"features: resuming {self.path.name}: {n_on_disk} examples on disk, "
                  f"extracting {n_missing}", file=sys.stderr)  # fmt: skip
        if missing:
            model = get_model()
            with progress_bar(len(self.examples), n_on_disk, progress) as bar:
                self.extract(model, missing, batch_size=batch_size, workers=workers,
                             on_batch=bar.update)  # fmt: skip
        return self.assemble(n_extracted=n_missing)
