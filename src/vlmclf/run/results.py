"""A finished run's predictions as the summary sees them, read from the store in chunks.

A run's predictions are never held as one Python object per row: ``StoredPredictions`` names
the stored rows (run id, the selected example ids) and reads them on demand, as numpy column
chunks for metrics or as Prediction chunks, both finalized (dataset-mean calibration needs the
whole run: the rows are read twice). ``predictions()`` builds the full list, for the small runs
that analyses and tests look at row by row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from vlmclf.methods import finalize_prediction_chunks, needs_finalizing
from vlmclf.metrics.columnar import summarize_columns
from vlmclf.records import Prediction, PredictionColumns
from vlmclf.spec import RunSpec
from vlmclf.store import RunStore

Summarizer = Callable[[list[Prediction], list[str]], dict]
"""A task-specific summary of a (small) run's whole prediction list, e.g. ImageWikiQA's."""


@dataclass(frozen=True)
class StoredPredictions:
    """The selected predictions of one stored run, read lazily (see the module docstring)."""

    store_path: Path
    run_id: str
    spec: RunSpec
    class_names: list[str]
    example_ids: frozenset[str] | None = None
    """Only these examples (a ``--limit`` run in a store that holds more); None: all."""

    @contextmanager
    def _open(self, store: RunStore | None) -> Iterator[RunStore]:
        if store is not None:
            yield store
            return
        with RunStore(self.store_path, read_only=True) as opened:
            yield opened

    def prediction_chunks(self, store: RunStore | None = None) -> Iterator[list[Prediction]]:
        """Finalized Prediction chunks in arrival order."""
        with self._open(store) as runs:
            ids = None if self.example_ids is None else set(self.example_ids)

            def read() -> Iterator[list[Prediction]]:
                return runs.prediction_chunks(self.run_id, example_ids=ids)

            yield from finalize_prediction_chunks(self.spec, read, self.class_names)

    def column_chunks(self, store: RunStore | None = None) -> Iterator[PredictionColumns]:
        """Finalized column chunks with scores; straight from the columns when nothing is to
        be finalized (no Prediction objects at all)."""
        if needs_finalizing(self.spec):
            for chunk in self.prediction_chunks(store):
                yield PredictionColumns.from_predictions(chunk, len(self.class_names))
            return
        with self._open(store) as runs:
            ids = None if self.example_ids is None else set(self.example_ids)
            yield from runs.column_chunks(self.run_id, example_ids=ids)

    def predictions(self, store: RunStore | None = None) -> list[Prediction]:
        """The whole finalized list (small runs only: one object per row)."""
        return [p for chunk in self.prediction_chunks(store) for p in chunk]

    def summary(
        self, store: RunStore | None = None, summarize_run: Summarizer | None = None
    ) -> dict:
        """The run's summary: ``metrics.summarize``'s numbers from column chunks, or a
        task-specific ``summarize_run`` given the whole list."""
        if summarize_run is not None:
            return summarize_run(self.predictions(store), self.class_names)
        return summarize_columns(self.column_chunks(store), self.class_names)


def export_run(
    store: RunStore,
    run_id: str,
    path: str | Path | BinaryIO,
    fmt: str,
    sources: Mapping[str, str] | None = None,
) -> int:
    """``vlmclf export``: every stored prediction of ``run_id`` as the summary sees it, so a
    run calibrated with the dataset-mean prior exports its calibrated scores, pred and hit (the
    stored rows hold the uncalibrated ones until the whole run is in). Returns the count."""
    record = store.get_run(run_id)
    if record is None:
        raise KeyError(f"no run {run_id!r} in {store.path}")
    stored = StoredPredictions(
        Path(store.path), run_id, RunSpec.model_validate(record.spec), record.class_names
    )
    chunks = stored.prediction_chunks(store)
    return store.export(run_id, path, fmt, chunks=chunks, sources=sources)  # type: ignore[arg-type]
