"""Packed float arrays for the store (schema 4): scores and per-token log-probs as bytes.

Why not JSON: a 998-class likelihood prediction held 120 KB of JSON text (scores and per-token
log-probs keyed by class name) and cost ~325 KB of Python heap to read back. Packed, it is about
18 KB and decodes straight into numpy.

The packing is lossless, like the JSON it replaces: values that are all exactly float32 (every
model's log-probs: models compute in float32 or narrower) are stored as float32, anything else
as float64; either way the bytes are grouped by byte position ("shuffled") and zlib-compressed
when that is smaller, which shrinks the sign/exponent bytes that neighbouring scores share.
NaN payloads, -0.0 and infinities survive bit for bit. ``None`` ("not scored") is not a float:
it is kept in a separate bit mask (:func:`pack_none_mask`), written only when a row has one.

Blob layout: one header byte (bit 0: float64, else float32; bit 1: shuffled + zlib), then the
little-endian values (or their compressed shuffle).

Named arrays (``{class name: [floats]}``, e.g. ``extra["token_logprobs"]``) are split into a
*layout*, int32 pairs ``(index into the run's distinct class names, number of values)`` in the
dict's order, and the concatenated values. Layouts repeat across a run's rows, so the store
keeps each distinct one once, by content hash (:func:`content_id`).
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

import numpy as np

_FLOAT64 = 0x01
_SHUFFLED_ZLIB = 0x02
_ZLIB_LEVEL = 6


def _shuffle(raw: np.ndarray) -> bytes:
    """Bytes grouped by their position in each value (all first bytes, then all second...)."""
    return raw.view(np.uint8).reshape(-1, raw.itemsize).T.tobytes()


def _unshuffle(data: bytes, dtype: np.dtype) -> np.ndarray:
    planes = np.frombuffer(data, dtype=np.uint8).reshape(dtype.itemsize, -1)
    return planes.T.copy().view(dtype).reshape(-1)


def pack_floats(values: np.ndarray | Sequence[float]) -> bytes:
    """Lossless bytes for a 1-D float array (see the module docstring for the layout)."""
    wide = np.ascontiguousarray(values, dtype="<f8")
    with np.errstate(over="ignore"):  # a value beyond float32 simply stays float64
        narrow = wide.astype("<f4")
    # bit-exact check: compares NaN payloads and the sign of zero too
    exact32 = np.array_equal(narrow.astype("<f8").view(np.uint64), wide.view(np.uint64))
    raw, flags = (narrow, 0) if exact32 else (wide, _FLOAT64)
    plain = raw.tobytes()
    if raw.size >= 16:
        packed = zlib.compress(_shuffle(raw), _ZLIB_LEVEL)
        if len(packed) < len(plain):
            return bytes([flags | _SHUFFLED_ZLIB]) + packed
    return bytes([flags]) + plain


def unpack_floats(blob: bytes) -> np.ndarray:
    """The float64 array :func:`pack_floats` packed (a new, writable array)."""
    if not blob:
        raise ValueError("empty packed-float blob")
    flags, body = blob[0], blob[1:]
    dtype = np.dtype("<f8" if flags & _FLOAT64 else "<f4")
    if flags & _SHUFFLED_ZLIB:
        values = _unshuffle(zlib.decompress(body), dtype)
    else:
        values = np.frombuffer(body, dtype=dtype)
    return values.astype(np.float64)


def pack_none_mask(is_none: np.ndarray) -> bytes | None:
    """A bit mask of the ``None`` entries, or None when there are none (the usual case)."""
    return np.packbits(is_none).tobytes() if is_none.any() else None


def unpack_none_mask(blob: bytes | None, n: int) -> np.ndarray:
    if blob is None:
        return np.zeros(n, dtype=bool)
    return np.unpackbits(np.frombuffer(blob, dtype=np.uint8), count=n).astype(bool)


def pack_scores(scores: Sequence[Any]) -> tuple[bytes, bytes | None]:
    """``(values, None mask)`` for a scores list; a None entry is stored as NaN plus its bit."""
    is_none = np.fromiter((s is None for s in scores), dtype=bool, count=len(scores))
    values = np.fromiter(
        (math.nan if s is None else float(s) for s in scores), dtype=np.float64, count=len(scores)
    )
    return pack_floats(values), pack_none_mask(is_none)


def unpack_scores(blob: bytes, none_mask: bytes | None) -> list[float | None]:
    values = unpack_floats(blob).tolist()
    if none_mask is not None:
        for i in np.flatnonzero(unpack_none_mask(none_mask, len(values))):
            values[i] = None
    return values


def content_id(data: bytes) -> str:
    """The key of a shared array: the same bytes, the same id, stored once."""
    return hashlib.sha256(data).hexdigest()[:32]


def pack_named(named: Any, column: Mapping[str, int]) -> tuple[bytes, bytes] | None:
    """``(layout, values)`` for ``{class name: [floats]}``, or None when it is not exactly that
    (a key that is not a class name, a value that is not a list of Python floats: ints, None,
    numpy scalars...): such an entry stays in the JSON ``extra``, which keeps it as it is."""
    if not isinstance(named, dict) or not named:
        return None
    layout = np.empty((len(named), 2), dtype="<i4")
    for i, (name, values) in enumerate(named.items()):
        if name not in column or type(values) is not list:
            return None
        layout[i] = (column[name], len(values))
    flat = list(chain.from_iterable(named.values()))
    if flat and set(map(type, flat)) != {float}:
        return None
    return layout.tobytes(), pack_floats(np.array(flat, dtype=np.float64))


def unpack_named(layout: bytes, values: bytes, names: Sequence[str]) -> dict[str, list[float]]:
    """Inverse of :func:`pack_named`; ``names`` are the run's distinct class names."""
    pairs = np.frombuffer(layout, dtype="<i4").reshape(-1, 2)
    flat = unpack_floats(values).tolist()
    out: dict[str, list[float]] = {}
    start = 0
    for index, count in pairs.tolist():
        out[names[index]] = flat[start : start + count]
        start += count
    if start != len(flat):
        raise ValueError(f"packed arrays hold {len(flat)} values, their layout {start}")
    return out
