"""Fashion-MNIST from IDX files (Debian's ``dataset-fashion-mnist`` layout).

The arrays are parsed once per process and cached; each Example turns one 28x28 grayscale
digit into an RGB PIL image on ``load()``. Its loader is a picklable ``partial`` that finds the
array through the cache, so a worker process parses the file once and then reuses it.
"""

from __future__ import annotations

import gzip
import threading
import zlib
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from vlmclf.data.classnames import load_class_names
from vlmclf.data.types import BadExampleError, Dataset, Example

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_UNSIGNED_BYTE = 0x08

_cache: dict[tuple[str, int, int], np.ndarray] = {}
_cache_lock = threading.Lock()


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (gzip-compressed or not) into an array.

    Checks the magic number, the data type, and that the payload size matches the dimensions
    in the header; raises ValueError naming the file otherwise.
    """
    path = Path(path)
    raw = _read_maybe_gzip(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != IDX_UNSIGNED_BYTE:
        raise ValueError(f"{path}: IDX data type 0x{dtype_code:02x} unsupported (need 0x08)")
    header_end = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header_end:
        raise ValueError(f"{path}: truncated IDX header ({ndim} dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(raw[4:header_end], dtype=">u4"))
    expected = int(np.prod(dims))
    if len(raw) - header_end != expected:
        raise ValueError(
            f"{path}: IDX payload has {len(raw) - header_end} bytes, header dims {dims} "
            f"need {expected}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_end).reshape(dims)


def cached_idx(path: str | Path) -> np.ndarray:
    """``read_idx`` once per process per file version (path, size, mtime)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = read_idx(path)
        return _cache[key]


def read_fashion_mnist(root: str | Path = FASHION_MNIST_ROOT, split: str = "test") -> Dataset:
    """Fashion-MNIST ``split`` ('train' or 'test') from ``root``; ids like ``test/00042``."""
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"fashion_mnist: unknown split {split!r}; use 'train' or 'test'")
    images_path, labels_path = (_find_idx(Path(root), stem) for stem in FASHION_MNIST_FILES[split])
    images, labels = cached_idx(images_path), cached_idx(labels_path)
    class_names = load_class_names("fashion_mnist")
    _check_fashion_arrays(images, labels, images_path, labels_path, len(class_names))
    width = max(5, len(str(len(labels) - 1)))
    examples = [
        Example(
            id=f"{split}/{i:0{width}d}",
            label=int(label),
            split=split,
            source=f"{images_path}#{i}",
            loader=partial(idx_image, images_path, i),
        )
        for i, label in enumerate(labels)
    ]
    return Dataset("fashion_mnist", split, class_names, examples)


def idx_image(images_path: Path, index: int) -> Image.Image:
    """Image ``index`` of an IDX image file, as RGB."""
    try:
        pixels = cached_idx(images_path)[index]
    except (OSError, ValueError, IndexError) as err:
        raise BadExampleError(f"{images_path}#{index}: cannot read image ({err})") from err
    return Image.fromarray(np.ascontiguousarray(pixels)).convert("RGB")


def _find_idx(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise ValueError(f"fashion_mnist: neither {root / stem}.gz nor {root / stem} exists")


def _read_maybe_gzip(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt gzip data ({err})") from err


def _check_fashion_arrays(
    images: np.ndarray, labels: np.ndarray, images_path: Path, labels_path: Path, n_classes: int
) -> None:
    if images.ndim != 3:
        raise ValueError(f"{images_path}: expected 3 IDX dimensions, got shape {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected 1 IDX dimension, got shape {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels"
        )
    if labels.size and int(labels.max()) >= n_classes:
        raise ValueError(f"{labels_path}: label {int(labels.max())} outside 0..{n_classes - 1}")
