"""The store's JSON convention: floats exact, non-finite floats tagged (see ``vlmclf.store``)."""

from __future__ import annotations

import json
import math
from typing import Any


def to_json_safe(obj: Any) -> Any:
    """Plain JSON values; non-finite floats tagged, numpy scalars/arrays made Python."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isfinite(obj):
            return float(obj)
        return {"$float": "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")}
    if isinstance(obj, dict):
        return {k: to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return to_json_safe(obj.tolist())
    raise TypeError(f"cannot store {type(obj).__name__} as JSON: {obj!r:.80}")


def from_json_safe(obj: Any) -> Any:
    """Inverse of :func:`to_json_safe`."""
    if isinstance(obj, dict):
        if len(obj) == 1 and isinstance(obj.get("$float"), str):
            return float(obj["$float"])
        return {k: from_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_json_safe(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    try:  # fast path: plain finite values (most rows); the walk below costs a call per value
        return json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(to_json_safe(obj), separators=(",", ":"), allow_nan=False)


def loads(text: str | None) -> Any:
    if text is None:
        return None
    value = json.loads(text)
    return from_json_safe(value) if '"$float"' in text else value
