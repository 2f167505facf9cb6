"""Writing a run's predictions to JSONL or Parquet, one chunk of rows at a time.

Both writers take the run as an iterator of Prediction chunks (``RunStore.prediction_chunks``)
and never hold more than one chunk: a 50,000-image run exports in the memory of ~1,000 rows.
The output is the same as writing all rows at once (Parquet: one row group per chunk).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from vlmclf.records import Prediction
from vlmclf.store.json_safe import dumps

_FIELDS = tuple(f.name for f in fields(Prediction))
EXPORT_CHUNK_ROWS = 256
"""Rows per chunk when exporting: a likelihood row is ~100 KB of JSON text once written out."""


def export_dict(run_id: str, p: Prediction) -> dict[str, Any]:
    """``run_id`` and every field, shallow (``asdict`` deep-copies every list: slow, and the
    row is written out at once anyway)."""
    return {"run_id": run_id, **{name: getattr(p, name) for name in _FIELDS}}


def write_jsonl(out: Path | BinaryIO, run_id: str, chunks: Iterable[list[Prediction]]) -> int:
    """To a file, or to an open binary stream (``export --out -``: standard output)."""
    count = 0
    with _text_sink(out) as f:
        for chunk in chunks:
            f.write("".join(dumps(export_dict(run_id, p)) + "\n" for p in chunk))
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
    """Columns typed for analysis: scores list<double> (null = not scored, NaN kept as NaN),
    choices list<int64>, extra as JSON text (free-form)."""
    import pyarrow as pa

    string, int64, float64, boolean = pa.string(), pa.int64(), pa.float64(), pa.bool_()
    return pa.schema(
        [("run_id", string), ("example_id", string), ("label", int64), ("ok", boolean),
         ("error", string), ("text", string), ("scores", pa.list_(float64)),
         ("choices", pa.list_(int64)), ("pred", int64), ("hit", boolean), ("seconds", float64),
         ("extra", string), ("outcome", string), ("flag", string)]
    )  # fmt: skip


def write_parquet(out: Path | BinaryIO, run_id: str, chunks: Iterable[list[Prediction]]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema()
    count = 0
    with pq.ParquetWriter(out, schema) as writer:
        for chunk in chunks:
            if not chunk:
                continue
            rows = [export_dict(run_id, p) | {"extra": dumps(p.extra)} for p in chunk]
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            count += len(chunk)
        if count == 0:  # an empty run still gets a file with the schema
            writer.write_table(schema.empty_table())
    return count
