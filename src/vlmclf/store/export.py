"""Writing a run's predictions to JSONL or Parquet, one chunk of rows at a time.

Both writers take the run as an iterator of Prediction chunks (``RunStore.prediction_chunks``)
and never hold more than one chunk: a 50,000-image run exports in the memory of ~1,000 rows.
The output is the same as writing all rows at once (Parquet: one row group per chunk).

JSONL and Parquet rows hold the same values of the same types. JSON has no NaN or infinity, so
a non-finite ``seconds`` or score is ``null`` in both (as pandas writes them; pandas reads both
back as NaN): a float column never holds a NaN in one format and an object in the other.
``extra`` is the store's exact JSON text, non-finite floats tagged, in both.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from vlmclf.records import Prediction
from vlmclf.store.json_safe import dumps

_FIELDS = tuple(f.name for f in fields(Prediction))
EXPORT_CHUNK_ROWS = 256
"""Rows per chunk when exporting: a likelihood row is ~100 KB of JSON text once written out."""
_NAMED = ("run_id", "example_id", "image", "label", "label_name", "pred", "pred_name")
COLUMNS = (*_NAMED, *(name for name in _FIELDS if name not in _NAMED))
"""The exported columns, in order: the example, its image and both labels by index and name
first, then every other stored field."""


@dataclass(frozen=True)
class RunNames:
    """What turns a stored row into a readable one: the run's class names and, where the
    dataset could be listed again, each example's image path."""

    class_names: list[str]
    sources: Mapping[str, str] | None = None


def export_dict(run_id: str, p: Prediction, names: RunNames) -> dict[str, Any]:
    """``run_id``, the image, the class names and every field, shallow (``asdict`` deep-copies
    every list: slow, and the row is written out at once anyway). ``extra`` (free-form, per
    method) is JSON text, the same in JSONL and Parquet; NaN and infinities are None."""
    row: dict[str, Any] = {name: getattr(p, name) for name in _FIELDS}
    row.update(
        run_id=run_id,
        image=None if names.sources is None else names.sources.get(p.example_id),
        label_name=names.class_names[p.label],
        pred_name=None if p.pred is None else names.class_names[p.pred],
        scores=_finite_scores(p.scores),
        seconds=_finite_or_none(p.seconds),
        extra=dumps(p.extra),
    )
    return {name: row[name] for name in COLUMNS}


def _finite_or_none(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def _finite_scores(scores: list[float | None] | None) -> list[float | None] | None:
    """The scores with NaN and infinities as None; the same list when all are finite (the
    usual row: one pass, no copy)."""
    if scores is None or all(s is None or math.isfinite(s) for s in scores):
        return scores
    return [_finite_or_none(s) for s in scores]


def write_jsonl(
    out: Path | BinaryIO, run_id: str, chunks: Iterable[list[Prediction]], names: RunNames
) -> int:
    """To a file, or to an open binary stream (``export --out-file -``: standard output)."""
    count = 0
    with _text_sink(out) as f:
        for chunk in chunks:
            f.write("".join(dumps(export_dict(run_id, p, names)) + "\n" for p in chunk))
            count += len(chunk)
    return count


@contextlib.contextmanager
def _text_sink(out: Path | BinaryIO) -> Iterator[TextIO]:
    """UTF-8 text with "\\n" line ends into ``out``; a stream given is flushed, never closed."""
    if isinstance(out, Path):
        with out.open("w", encoding="utf-8") as f:
            yield f
        return
    wrapper = io.TextIOWrapper(out, encoding="utf-8", newline="\n")
    try:
        yield wrapper
        wrapper.flush()
    finally:
        wrapper.detach()


def parquet_schema() -> Any:
    """Columns typed for analysis, the JSON types of the JSONL rows: scores list<double> (null =
    not scored; a null element: that class not scored, or its score NaN or infinite),
    choices list<int64>, extra as JSON text (free-form)."""
    import pyarrow as pa

    string, int64, float64, boolean = pa.string(), pa.int64(), pa.float64(), pa.bool_()
    types = {"run_id": string, "example_id": string, "image": string, "label": int64,
             "label_name": string, "pred": int64, "pred_name": string, "ok": boolean,
             "error": string, "text": string, "scores": pa.list_(float64),
             "choices": pa.list_(int64), "hit": boolean, "seconds": float64, "extra": string,
             "outcome": string, "flag": string}  # fmt: skip
    return pa.schema([(name, types[name]) for name in COLUMNS])


def write_parquet(
    out: Path | BinaryIO, run_id: str, chunks: Iterable[list[Prediction]], names: RunNames
) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema()
    count = 0
    with pq.ParquetWriter(out, schema) as writer:
        for chunk in chunks:
            if not chunk:
                continue
            rows = [export_dict(run_id, p, names) for p in chunk]
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            count += len(chunk)
        if count == 0:  # an empty run still gets a file with the schema
            writer.write_table(schema.empty_table())
    return count
