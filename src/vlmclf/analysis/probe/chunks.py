"""Finished pieces of a feature extraction, kept on disk so that a killed extraction resumes.

An extraction of ``n`` examples is planned as fixed example-index ranges ``[0, size)``,
``[size, 2 size)``, ... (``plan_chunks``). Each finished range is written atomically as its own
safetensors file, ``chunk-<start>-<end>.safetensors``, in a ``.partial`` folder beside the final
cache file, holding the features of the examples that decoded, their labels and ids, and the
failures with their reasons. A re-run extracts only the ranges that have no valid file, then
concatenates the chunks in index order into the final file and removes the folder.

Chunks are named by index range, not by the order in which they were finished, so any range
may be made anywhere: under torchrun each rank extracts its own ranges and the main rank writes
and assembles them (``ranks.py``). Only the chunk being extracted is held in memory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

DEFAULT_CHUNK_EXAMPLES = 1024
"""Examples per chunk file: small enough that a kill loses little, large enough to stay few."""
LABELS = "labels"
_CHUNK_NAME = re.compile(r"^chunk-(\d+)-(\d+)\.safetensors$")
HOLD_ENV = "VLMCLF_TEST_HOLD_AFTER_FEATURE_CHUNKS"
"""Fault injection for the crash tests: block (until killed) once this many chunks are written."""


@dataclass(frozen=True, order=True)
class ChunkRange:
    """Examples ``start`` (inclusive) to ``end`` (exclusive) of the selection."""

    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def file_name(self) -> str:
        return f"chunk-{self.start:09d}-{self.end:09d}.safetensors"


@dataclass
class ChunkContent:
    """What one chunk file holds (features of the decoded examples only)."""

    ids: list[str]
    labels: torch.Tensor
    features: dict[str, torch.Tensor]
    failures: list[dict[str, str]]


def plan_chunks(n_examples: int, size: int) -> list[ChunkRange]:
    """The fixed index ranges of an extraction of ``n_examples``."""
    if size < 1:
        raise ValueError(f"a feature chunk must hold at least one example, got {size}")
    return [ChunkRange(s, min(s + size, n_examples)) for s in range(0, n_examples, size)]


def partial_folder(final_path: Path) -> Path:
    """``<cache file>.partial/``: the chunks of the extraction that will become ``final_path``."""
    return final_path.with_name(final_path.name.removesuffix(".safetensors") + ".partial")


def write_chunk(folder: Path, chunk: ChunkRange, content: ChunkContent, key_digest: str) -> Path:
    """Write atomically (temporary sibling, then rename): a kill never leaves half a chunk."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.contiguous() for name, t in content.features.items()}
    tensors[LABELS] = content.labels.contiguous()
    metadata = {
        "key_digest": key_digest,
        "start": str(chunk.start),
        "end": str(chunk.end),
        "ids": json.dumps(content.ids),
        "failures": json.dumps(content.failures),
    }
    path = folder / chunk.file_name
    tmp = folder / f".{chunk.file_name}.{os.getpid()}.tmp"
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def read_chunk(path: Path, key_digest: str | None = None) -> ChunkContent:
    """A chunk file's content; ValueError when it is not one of ``key_digest``'s chunks."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        names = [n for n in handle.keys() if n != LABELS]  # noqa: SIM118 - not a dict
        features = {name: handle.get_tensor(name) for name in names}
        labels = handle.get_tensor(LABELS)
    if key_digest is not None and metadata.get("key_digest") != key_digest:
        raise ValueError(f"{path}: a chunk of another extraction")
    try:
        ids = json.loads(metadata["ids"])
        failures = json.loads(metadata["failures"])
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a vlmclf feature chunk ({err})") from err
    if len(ids) != labels.numel() or any(t.shape[0] != len(ids) for t in features.values()):
        raise ValueError(f"{path}: ids, labels and features disagree in length")
    return ChunkContent(ids, labels, features, failures)


def finished_chunks(folder: Path, planned: list[ChunkRange], key_digest: str) -> set[ChunkRange]:
    """The planned ranges whose chunk file is on disk and readable. Files of other ranges (a
    different chunk size) and unreadable files are ignored and extracted again."""
    if not folder.is_dir():
        return set()
    wanted = {chunk.file_name: chunk for chunk in planned}
    done = set()
    for path in sorted(folder.iterdir()):
        chunk = wanted.get(path.name)
        if chunk is None or not _CHUNK_NAME.match(path.name):
            continue
        try:
            content = read_chunk(path, key_digest)
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            print(f"warning: ignoring unreadable feature chunk {path}: {err}", file=sys.stderr)
            continue
        if len(content.ids) + len(content.failures) == chunk.size:
            done.add(chunk)
    return done


def assemble_chunks(
    folder: Path, planned: list[ChunkRange]
) -> tuple[list[str], torch.Tensor, dict[str, torch.Tensor], list[dict[str, str]]]:
    """(ids, labels, features, failures) of every chunk, in index order."""
    ids: list[str] = []
    labels: list[torch.Tensor] = []
    parts: dict[str, list[torch.Tensor]] = {}
    failures: list[dict[str, str]] = []
    for chunk in planned:
        content = read_chunk(folder / chunk.file_name)
        ids += content.ids
        labels.append(content.labels)
        failures += content.failures
        for name, tensor in content.features.items():
            parts.setdefault(name, []).append(tensor)
    features = {name: torch.cat(chunks).contiguous() for name, chunks in parts.items()}
    all_labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)
    return ids, all_labels, features, failures


def remove_partial(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


class ChunkFaults:
    """Counts the chunks this process wrote; holds when ``HOLD_ENV`` says so (tests only)."""

    def __init__(self) -> None:
        value = os.environ.get(HOLD_ENV, "").strip()
        self.hold_after = int(value) if value.isdigit() else None
        self.written = 0

    def chunk_written(self) -> None:
        self.written += 1
        if self.hold_after is not None and self.written >= self.hold_after:
            import time

            print(f"{HOLD_ENV}: holding after {self.written} chunks", file=sys.stderr, flush=True)
            while True:
                time.sleep(60)
