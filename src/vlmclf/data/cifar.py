"""CIFAR-10 and CIFAR-100 from the "python version" pickle batches their authors distribute.

A batch is a pickled dict with ``data`` (N x 3072 uint8: the red, then green, then blue plane of
a 32 x 32 image, row-major) and ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100). Batches are
unpickled by an unpickler that only builds numpy arrays and plain containers, so a tampered file
cannot run code; each is parsed once per process and cached, and an Example turns one row into an
RGB image on ``load()`` (its loader a picklable ``partial``, as for Fashion-MNIST).
"""

from __future__ import annotations

import io
import pickle
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from vlmclf.data.classnames import load_class_names
from vlmclf.data.listing import require_file
from vlmclf.data.types import BadExampleError, Dataset, Example

CIFAR_SIDE = 32


@dataclass(frozen=True)
class CifarRelease:
    folder: str
    batches: dict[str, tuple[str, ...]]
    label_key: str


CIFAR_RELEASES = {
    "cifar10": CifarRelease(
        "cifar-10-batches-py",
        {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        "labels",
    ),
    "cifar100": CifarRelease(
        "cifar-100-python", {"train": ("train",), "test": ("test",)}, "fine_labels"
    ),
}
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}
"""What a batch's pickle may refer to: numpy's array reconstruction and nothing else."""

_cache: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]] = {}
_cache_lock = threading.Lock()


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refers to {module}.{name}, which a batch never needs")
        return super().find_class(module, name)


def read_cifar(name: str, root: str | Path, split: str = "test") -> Dataset:
    """CIFAR ``split`` ('train' or 'test') from ``root/<release folder>`` or ``root`` itself;
    ids like ``test/00042`` (the row across the split's batches, in file order)."""
    release = CIFAR_RELEASES[name]
    if split not in release.batches:
        raise ValueError(f"{name}: unknown split {split!r}; use 'train' or 'test'")
    root = Path(root)
    base = root / release.folder if (root / release.folder).is_dir() else root
    class_names = load_class_names(name)
    examples: list[Example] = []
    for batch_name in release.batches[split]:
        path = require_file(base / batch_name, name)
        _, labels = cached_batch(path, release.label_key, len(class_names))
        start = len(examples)
        examples.extend(
            Example(
                id=f"{split}/{start + row:05d}",
                label=int(label),
                split=split,
                source=f"{path}#{row}",
                loader=partial(cifar_image, path, release.label_key, len(class_names), row),
            )
            for row, label in enumerate(labels)
        )
    return Dataset(name, split, class_names, examples)


def cached_batch(path: Path, label_key: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(images N x 32 x 32 x 3, labels N)`` of one batch file, parsed once per file version."""
    path = path.resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = _parse_batch(path, label_key, n_classes)
        return _cache[key]


def cifar_image(path: Path, label_key: str, n_classes: int, row: int) -> Image.Image:
    """Row ``row`` of a batch file as an RGB image."""
    try:
        pixels = cached_batch(path, label_key, n_classes)[0][row]
    except (OSError, ValueError, IndexError) as err:
        raise BadExampleError(f"{path}#{row}: cannot read image ({err})") from err
    return Image.fromarray(pixels, mode="RGB")


def _parse_batch(path: Path, label_key: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except Exception as err:  # pickle raises many unrelated types for a corrupt file
        raise ValueError(f"{path}: not a CIFAR python batch ({err})") from err
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: not a CIFAR python batch (a {type(batch).__name__})")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    for key in ("data", label_key):
        if key not in batch:
            raise ValueError(f"{path}: no {key!r} entry (found {sorted(map(str, batch))})")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    side = CIFAR_SIDE * CIFAR_SIDE
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * side:
        raise ValueError(f"{path}: 'data' must be N x 3072 uint8, got {data.dtype} {data.shape}")
    if len(labels) != len(data):
        raise ValueError(f"{path}: {len(data)} images but {len(labels)} {label_key}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"{path}: {label_key} outside 0..{n_classes - 1}")
    images = data.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def cifar_reader(name: str) -> partial[Dataset]:
    """``read_cifar`` for one release, as a ``(root, split) -> Dataset`` reader."""
    return partial(read_cifar, name)
