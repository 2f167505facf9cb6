"""Disk cache of the frozen image encoder's visual tokens, per dataset split.

The encoder is frozen, so its output for an example never changes: training (and repeated
feature work) encodes each image once. A cache file holds the tokens of the examples asked for
so far, keyed by (encoder, resolution, pooling) in the folder name, (dataset, split) in the
file name and the example id inside. The models themselves take PIL images and never read it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vlmclf.data.types import Dataset
from vlmclf.organism.components import (
    IMAGE_ENCODER,
    IMAGE_RESOLUTION,
    NUM_VISUAL_TOKENS,
    VISUAL_GRID,
    cache_dir,
    encode_visual_tokens,
    image_feature_dim,
)

ENCODE_CHUNK = 256
FLUSH_EVERY = 2048
"""Rewrite the cache file after this many new examples (and at the end), not after each chunk."""


def feature_cache_path(
    dataset_name: str, split: str, resolution: int = IMAGE_RESOLUTION, encoder: str = IMAGE_ENCODER
) -> Path:
    """The cache file for one dataset split under the given encoder settings."""
    encoder_key = f"{encoder}-{resolution}px-global+{VISUAL_GRID}x{VISUAL_GRID}"
    safe_name = dataset_name.replace("/", "_").replace(os.sep, "_")
    return cache_dir() / "features" / encoder_key / safe_name / f"{split}.safetensors"


def read_feature_cache(path: Path) -> dict[str, torch.Tensor]:
    """{example id: (NUM_VISUAL_TOKENS, 1280) tokens} from a cache file; {} if there is none."""
    if not path.is_file():
        return {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            ids = json.loads((handle.metadata() or {}).get("ids", "[]"))
            tokens = handle.get_tensor("tokens")
    except (OSError, ValueError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable feature cache ({err}); delete it to rebuild") from err
    if len(ids) != tokens.shape[0]:
        raise ValueError(f"{path}: {len(ids)} ids for {tokens.shape[0]} rows; delete it to rebuild")
    return dict(zip(ids, tokens, strict=True))


def write_feature_cache(path: Path, entries: dict[str, torch.Tensor]) -> None:
    """Write all entries atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = list(entries)
    if not ids:
        return
    tokens = torch.stack([entries[i] for i in ids])
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(handle)
    try:
        save_file({"tokens": tokens.contiguous()}, tmp, metadata={"ids": json.dumps(ids)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dataset_visual_tokens(
    dataset: Dataset,
    indices: Sequence[int],
    *,
    resolution: int = IMAGE_RESOLUTION,
    progress: Callable[[int, int], None] | None = None,
    encoder: str = IMAGE_ENCODER,
) -> torch.Tensor:
    """Visual tokens of ``dataset.examples[i]`` for each i, (len(indices), 5, channels) float32.

    Missing examples are encoded in chunks; the cache file is rewritten every FLUSH_EVERY new
    examples and at the end, so an interrupted run keeps most of what it computed.
    ``progress(done, total)`` is called per chunk.
    """
    path = feature_cache_path(dataset.name, dataset.split, resolution, encoder)
    cached = read_feature_cache(path)
    wanted_ids = [dataset.examples[i].id for i in indices]
    missing = sorted({i for i in indices if dataset.examples[i].id not in cached})
    for start in range(0, len(missing), ENCODE_CHUNK):
        chunk = missing[start : start + ENCODE_CHUNK]
        images = [dataset.examples[i].load() for i in chunk]
        tokens = encode_visual_tokens(images, resolution, encoder=encoder)
        cached.update({dataset.examples[i].id: t for i, t in zip(chunk, tokens, strict=True)})
        done = start + len(chunk)
        if done == len(missing) or done % FLUSH_EVERY < ENCODE_CHUNK:
            write_feature_cache(path, cached)
        if progress is not None:
            progress(done, len(missing))
    if not wanted_ids:
        return torch.zeros(0, NUM_VISUAL_TOKENS, image_feature_dim(encoder))
    return torch.stack([cached[i] for i in wanted_ids])
