"""Columnar reads of the store agree with the list-of-Prediction reference implementation."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from vlmclf.metrics import per_class_accuracy, summarize
from vlmclf.metrics.columnar import per_class_accuracy_columns, summarize_columns
from vlmclf.records import Prediction, PredictionColumns
from vlmclf.store import RunStore

NAMES = ["cat", "dog", "missile", "missile", "bird", "sunglasses", "sunglasses", "ant"]


def random_prediction(rng: random.Random, i: int, n: int = len(NAMES)) -> Prediction:
    """Every kind of record: failures of each kind, odd answers, None and NaN scores, closed
    world (scores only for the offered choices), ties, duplicate class names."""
    label = rng.randrange(n)
    kind = rng.random()
    if kind < 0.08:
        return Prediction.failed(f"e{i}", label, "unreadable")
    if kind < 0.14:
        return Prediction.transient(f"e{i}", label, "oom")
    choices = sorted(rng.sample(range(n), 4)) if rng.random() < 0.3 else None
    scores: list[float | None] | None = None
    if rng.random() < 0.8:
        scores = [float(rng.choice([-1.0, -2.0, rng.gauss(0, 3)])) for _ in range(n)]
        if choices is not None:
            scores = [s if c in choices else None for c, s in enumerate(scores)]
        if rng.random() < 0.1:
            scores[rng.randrange(n)] = math.nan
    pred = None if rng.random() < 0.15 else rng.randrange(n)
    hit = None if rng.random() < 0.5 else rng.random() < 0.5
    flag = rng.choice([None, None, None, "empty", "refused", "truncated"])
    return Prediction(f"e{i}", label, text=f"t{i} ✓", scores=scores, choices=choices, pred=pred,
                      hit=hit, flag=flag, seconds=rng.random())  # fmt: skip


def build_store(path: Path, preds: list[Prediction], names: list[str] = NAMES) -> RunStore:
    store = RunStore(path)
    store.start_run("r", json.dumps({"model": "m"}), names, len(preds))
    for start in range(0, len(preds), 37):
        store.add_predictions("r", preds[start : start + 37])
    return store


@pytest.mark.parametrize("seed", range(6))
def test_columnar_summary_equals_reference(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    preds = [random_prediction(rng, i) for i in range(rng.choice([0, 1, 5, 300]))]
    with build_store(tmp_path / "s.db", preds) as store:
        stored = store.predictions("r")
        reference = summarize(stored, NAMES, seed=seed)
        got = summarize_columns(store.column_chunks("r", chunk_rows=29), NAMES, seed=seed)
        assert json.dumps(got, sort_keys=True) == json.dumps(reference, sort_keys=True)
        for rule in ("strict", "contain"):
            assert per_class_accuracy_columns(store.columns("r"), NAMES, rule) == (
                per_class_accuracy(stored, NAMES, rule)
            )
        subset = {p.example_id for p in preds[::3]}
        chunks = store.column_chunks("r", example_ids=subset, chunk_rows=50)
        assert summarize_columns(chunks, NAMES) == summarize(
            [p for p in stored if p.example_id in subset], NAMES
        )


def test_columns_of_predictions_match_columns_read_from_store(tmp_path: Path) -> None:
    rng = random.Random(7)
    preds = [random_prediction(rng, i) for i in range(120)]
    with build_store(tmp_path / "s.db", preds) as store:
        read = PredictionColumns.concat(list(store.column_chunks("r", chunk_rows=16)))
    built = PredictionColumns.from_predictions(preds, len(NAMES))
    for field in PredictionColumns.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(read, field), getattr(built, field), err_msg=field)


def test_summary_is_checked_against_a_different_answer(tmp_path: Path) -> None:
    """The comparison can fail: flipping one hit changes the columnar summary."""
    rng = random.Random(3)
    preds = [random_prediction(rng, i) for i in range(50)]
    first = next(p for p in preds if p.ok and p.hit is not None)
    reference = summarize(preds, NAMES)
    first.hit = not first.hit
    cols = PredictionColumns.from_predictions(preds, len(NAMES))
    assert summarize_columns([cols], NAMES) != reference


def test_a_label_outside_the_classes_is_an_error_naming_the_example() -> None:
    cols = PredictionColumns.from_predictions([Prediction("bad", 9, pred=1)], len(NAMES))
    with pytest.raises(ValueError, match="'bad'.*label=9"):
        summarize_columns([cols], NAMES)


def test_streamed_dataset_mean_calibration_equals_the_list_version(tmp_path: Path) -> None:
    """finalize in two passes over small chunks == finalize on the whole list; the summary
    of a calibrated run (StoredPredictions) == summarize of the finalized list."""
    from test_store_packed import NAMES as LIKELIHOOD_NAMES
    from test_store_packed import likelihood_prediction

    from vlmclf.methods import finalize_prediction_chunks, finalize_predictions
    from vlmclf.run.results import StoredPredictions
    from vlmclf.spec import RunSpec

    spec = RunSpec(model="m", dataset="d", method="likelihood",
                   options={"cfg": 2.5, "calibration": "dataset_mean"})  # fmt: skip
    preds = [likelihood_prediction(i, prior=False) for i in range(40)]
    preds[5] = Prediction.failed("ex5", 1, "unreadable")
    path = tmp_path / "c.db"
    with build_store(path, preds, LIKELIHOOD_NAMES) as store:
        whole = finalize_predictions(spec, store.predictions("r"), LIKELIHOOD_NAMES)
        streamed = [p for chunk in finalize_prediction_chunks(
            spec, lambda: store.prediction_chunks("r", chunk_rows=7), LIKELIHOOD_NAMES
        ) for p in chunk]  # fmt: skip
        assert streamed == whole
        assert [p.scores for p in whole] != [p.scores for p in store.predictions("r")]
    selected = frozenset(f"ex{i}" for i in range(30))
    view = StoredPredictions(path, "r", spec, LIKELIHOOD_NAMES, selected)
    # the selection changes the prior: the reference is finalized on the selected rows
    expected = finalize_predictions(spec, [p for p in preds if p.example_id in view.example_ids],
                                    LIKELIHOOD_NAMES)  # fmt: skip
    assert view.predictions() == expected
    assert view.summary() == summarize(expected, LIKELIHOOD_NAMES)
