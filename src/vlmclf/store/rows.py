"""Prediction <-> predictions-table row, for every schema the store reads.

Schema 4 keeps ``scores`` and the likelihood method's ``extra["token_logprobs"]`` and
``extra["image_free"]`` as packed arrays (``store_arrays``); rows written before schema 4 keep
their JSON (``scores_json``, everything in ``extra_json``) and are read as they are, so a store
upgraded in place mixes both kinds of row. ``image_free`` is identical for every image of a run,
so its layout and values live once in the ``arrays`` table, keyed by content hash; so do the
token log-prob layouts (one per distinct class list offered).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vlmclf.records import (
    ANSWER_FLAGS,
    FLAG_CODES,
    OUTCOME_CODES,
    OUTCOMES,
    Prediction,
    PredictionColumns,
)
from vlmclf.store.arrays import (
    content_id,
    pack_named,
    pack_scores,
    unpack_floats,
    unpack_named,
    unpack_scores,
)
from vlmclf.store.json_safe import dumps as _dumps
from vlmclf.store.json_safe import loads as _loads

PACKED_EXTRA = ("token_logprobs", "image_free")

# Every column a Prediction is written to, in the order of the row tuples below. The packed
# blobs come last: a reader of the small columns never walks their overflow pages.
PRED_COLUMNS = (
    "example_id, label, ok, error, text, scores_json, choices_json, pred, hit, seconds, extra_json,"
    " outcome, flag, scores_none, logprobs_layout, image_free_layout, image_free, scores_packed,"
    " logprobs"
)
# The same without the likelihood arrays (a reader of texts and labels: reports, rematch).
PRED_COLUMNS_WITHOUT_ARRAYS = PRED_COLUMNS.replace(
    " logprobs_layout, image_free_layout, image_free, scores_packed, logprobs",
    " NULL, NULL, NULL, scores_packed, NULL",
)
_V4_COLUMNS = (
    "scores_none, logprobs_layout, image_free_layout, image_free, scores_packed, logprobs"
)
# What a store older than schema 3 (opened read-only, so not upgraded) reads for those columns.
OUTCOME_BEFORE_V3 = "CASE WHEN ok = 0 THEN 'data_failure' ELSE 'answer' END"


def columns_for(version: int, columns: str = PRED_COLUMNS) -> str:
    """``columns`` as a SELECT list for a store of ``version`` (absent columns read as NULL)."""
    if version < 4:
        for name in _V4_COLUMNS.split(", "):
            columns = columns.replace(f" {name},", " NULL,").replace(f" {name}", " NULL")
    if version < 3:
        columns = columns.replace(" outcome,", f" {OUTCOME_BEFORE_V3},").replace(" flag,", " NULL,")
        columns = columns.replace(" outcome", f" {OUTCOME_BEFORE_V3}").replace(" flag", " NULL")
    return columns


def check_index(value: Any, n_classes: int, example_id: str, name: str) -> int:
    try:
        index = operator.index(value)
    except TypeError:
        raise ValueError(f"prediction {example_id!r}: {name}={value!r} is not an integer") from None
    if not 0 <= index < n_classes:
        raise ValueError(
            f"prediction {example_id!r}: {name}={index} is outside the run's {n_classes} classes"
        )
    return index


class RowEncoder:
    """Validates Predictions against one run's class list and turns them into rows; the
    shared arrays a batch needs are collected in ``arrays`` for the same transaction."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.n_classes = len(class_names)
        self.column = {name: i for i, name in enumerate(dict.fromkeys(class_names))}
        self.arrays: dict[str, bytes] = {}

    def _shared(self, data: bytes) -> str:
        key = content_id(data)
        self.arrays[key] = data
        return key

    def row(self, p: Prediction) -> tuple[Any, ...]:
        eid = str(p.example_id)
        n = self.n_classes
        label = check_index(p.label, n, eid, "label")
        pred = None if p.pred is None else check_index(p.pred, n, eid, "pred")
        scores_packed = scores_none = None
        if p.scores is not None:
            if len(p.scores) != n:
                raise ValueError(
                    f"prediction {eid!r}: scores has {len(p.scores)} entries, the run has "
                    f"{n} classes"
                )
            scores_packed, scores_none = pack_scores(p.scores)
        choices_json = None
        if p.choices is not None:
            choices_json = _dumps([check_index(c, n, eid, "choices") for c in p.choices])
        if p.outcome not in OUTCOMES:
            raise ValueError(f"prediction {eid!r}: outcome {p.outcome!r} is not one of {OUTCOMES}")
        if p.flag is not None and p.flag not in ANSWER_FLAGS:
            raise ValueError(f"prediction {eid!r}: flag {p.flag!r} is not one of {ANSWER_FLAGS}")
        extra = dict(p.extra or {})
        logprobs_layout = logprobs = image_free_layout = image_free = None
        packed = pack_named(extra.get("token_logprobs"), self.column)
        if packed is not None:  # the JSON keeps the key (null) so that its place is kept
            logprobs_layout, logprobs = self._shared(packed[0]), packed[1]
            extra["token_logprobs"] = None
        packed = pack_named(extra.get("image_free"), self.column)
        if packed is not None:
            image_free_layout, image_free = self._shared(packed[0]), self._shared(packed[1])
            extra["image_free"] = None
        return (
            eid, label, int(bool(p.ok)), None if p.error is None else str(p.error),
            None if p.text is None else str(p.text), None, choices_json, pred,
            None if p.hit is None else int(bool(p.hit)),
            float(p.seconds) if p.seconds is not None else None, _dumps(extra), p.outcome, p.flag,
            scores_none, logprobs_layout, image_free_layout, image_free, scores_packed, logprobs,
        )  # fmt: skip


ArrayFetcher = Callable[[list[str]], dict[str, bytes]]


class RowDecoder:
    """Turns rows of one run back into Predictions or columns. Shared arrays are fetched
    through ``fetch`` once each and kept (a run has few distinct ones)."""

    def __init__(self, class_names: Sequence[str], fetch: ArrayFetcher) -> None:
        self.n_classes = len(class_names)
        self.names = list(dict.fromkeys(class_names))
        self._fetch = fetch
        self._arrays: dict[str, bytes] = {}
        self._named: dict[tuple[str, str], dict[str, list[float]]] = {}

    def prefetch(self, rows: Sequence[tuple[Any, ...]], positions: Sequence[int]) -> None:
        wanted = {r[i] for r in rows for i in positions if r[i] is not None}
        missing = sorted(wanted - self._arrays.keys())
        if missing:
            found = self._fetch(missing)
            lost = set(missing) - found.keys()
            if lost:
                raise ValueError(f"shared array(s) {sorted(lost)[:3]} missing from the store")
            self._arrays.update(found)

    def prediction(self, r: tuple[Any, ...]) -> Prediction:
        """One row of ``PRED_COLUMNS`` (arrays prefetched) as a Prediction."""
        extra = _loads(r[10])
        if r[14] is not None:
            extra["token_logprobs"] = unpack_named(self._arrays[r[14]], r[18], self.names)
        if r[15] is not None:
            key = (r[15], r[16])
            if key not in self._named:  # one dict per run, shared by every row (read-only use)
                self._named[key] = unpack_named(self._arrays[r[15]], self._arrays[r[16]],
                                                self.names)  # fmt: skip
            extra["image_free"] = {k: list(v) for k, v in self._named[key].items()}
        scores = unpack_scores(r[17], r[13]) if r[17] is not None else _loads(r[5])
        return Prediction(
            example_id=r[0], label=r[1], ok=bool(r[2]), error=r[3], text=r[4], scores=scores,
            choices=_loads(r[6]), pred=r[7], hit=None if r[8] is None else bool(r[8]),
            seconds=math.nan if r[9] is None else r[9], extra=extra, outcome=r[11], flag=r[12],
        )  # fmt: skip

    def columns(self, rows: Sequence[tuple[Any, ...]], with_scores: bool) -> PredictionColumns:
        """Rows of ``COLUMN_SELECT`` as numpy columns (scores as NaN-filled float64)."""
        n = len(rows)
        scores = np.full((n, self.n_classes), np.nan) if with_scores else None
        has_scores = np.zeros(n, dtype=bool)
        for i, r in enumerate(rows):
            has_scores[i] = bool(r[7]) or bool(r[8])  # blob or JSON; without scores: 0/1 flags
            if scores is None or not has_scores[i]:
                continue
            if r[7]:
                scores[i] = unpack_floats(r[7])
            else:
                scores[i] = [math.nan if v is None else v for v in _loads(r[8])]
        return PredictionColumns(
            example_id=np.array([r[0] for r in rows], dtype=object),
            label=np.array([r[1] for r in rows], dtype=np.int64),
            ok=np.array([r[2] for r in rows], dtype=bool),
            outcome=np.array([OUTCOME_CODES[r[5]] for r in rows], dtype=np.int8),
            flag=np.array([FLAG_CODES[r[6]] for r in rows], dtype=np.int8),
            pred=np.array([-1 if r[3] is None else r[3] for r in rows], dtype=np.int64),
            hit=np.array([-1 if r[4] is None else r[4] for r in rows], dtype=np.int8),
            has_scores=has_scores,
            scores=scores,
        )


# The columns ``RowDecoder.columns`` reads: no text, no extra, no log-probs.
COLUMN_SELECT = "example_id, label, ok, pred, hit, outcome, flag"


def column_select(version: int, with_scores: bool) -> str:
    if with_scores:
        score_columns = ", scores_packed, scores_json"
    else:  # only whether there are scores: the blobs are not read
        score_columns = ", scores_packed IS NOT NULL, scores_json IS NOT NULL"
    return columns_for(version, COLUMN_SELECT + score_columns)
