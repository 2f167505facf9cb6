"""Schema 4: packed scores and per-token log-probs, lossless, compact, and old stores still read."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from vlmclf.records import Prediction
from vlmclf.store.arrays import pack_floats, unpack_floats
from vlmclf.store.json_safe import dumps
from vlmclf.store.run_store import (
    _SCHEMA_V1,
    _SCHEMA_V2,
    _SCHEMA_V3,
    APPLICATION_ID,
    SCHEMA_VERSION,
    RunStore,
)

NAMES = ["chat noir", "Schäferhund", "missile", "missile", "猫", "emoji 🐈"]
DISTINCT = list(dict.fromkeys(NAMES))
ODD = [0.1 + 0.2, 5e-324, -0.0, 1.7976931348623157e308, math.nan, math.inf, -math.inf, 1e-45]


def bits(x: object) -> object:
    """Bit-exact comparison: NaN equals NaN, -0.0 differs from 0.0."""
    if isinstance(x, float):
        return ("f", x.hex()) if not math.isnan(x) else ("f", "nan")
    if isinstance(x, dict):
        return {k: bits(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [bits(v) for v in x]
    return x


def likelihood_prediction(i: int, closed: bool = False, prior: bool = True) -> Prediction:
    """A likelihood record: float32 log-probs (what models give), float64 sums as scores."""
    rng = np.random.default_rng(i)
    names = DISTINCT[::-1][:3] if closed else DISTINCT  # closed world: a subset, in its order
    logprobs = {n: [float(v) for v in (-rng.gamma(2, 2, size=1 + j % 4)).astype(np.float32)]
                for j, n in enumerate(names)}  # fmt: skip
    named = {n: math.fsum(v) for n, v in logprobs.items()}
    scores = [named.get(n) for n in NAMES]
    extra: dict = {"token_logprobs": logprobs, "agg": "sum", "cfg": 1.5 if prior else None}
    if prior:
        extra["image_free"] = {n: [-1.25 * (k + 1), -0.5] for k, n in enumerate(names)}
    return Prediction(f"ex{i}", i % len(NAMES), scores=scores, pred=0, hit=i % 2 == 0,
                      choices=[4, 2, 1] if closed else None, text="ünï ✓", extra=extra)  # fmt: skip


@pytest.fixture
def store(tmp_path: Path):
    with RunStore(tmp_path / "s.db") as s:
        s.start_run("r", json.dumps({"m": 1}), NAMES, 10)
        yield s


def test_pack_floats_is_lossless_and_picks_the_narrow_type() -> None:
    for values in (ODD, [float(np.float32(v)) for v in np.linspace(-9, 0, 200)], [], [1.0] * 40):
        back = unpack_floats(pack_floats(values)).tolist()
        assert bits(back) == bits(list(values))
    narrow = pack_floats(np.float32(np.linspace(-9, 0, 100)))
    assert not narrow[0] & 1 and len(narrow) < 100 * 4 + 1  # float32, compressed
    assert pack_floats([0.1 + 0.2] * 3)[0] & 1  # not exactly float32: float64


def test_likelihood_fields_round_trip_exactly(store: RunStore) -> None:
    preds = [likelihood_prediction(i, closed=i % 3 == 1, prior=i % 2 == 0) for i in range(9)]
    preds.append(Prediction("odd", 1, scores=[ODD[4], None, *ODD[:4]], extra={"x": ODD}))
    preds.append(Prediction("odd-named", 1, extra={"token_logprobs": {"not a class": [1.0]},
                                                   "image_free": {"猫": [1, None]}}))  # fmt: skip
    preds.append(Prediction.failed("gone", 0, "unreadable ✗"))
    store.add_predictions("r", preds)
    back = store.predictions("r")
    assert [bits(p.__dict__) for p in back] == [bits(p.__dict__) for p in preds]
    assert list(back[1].extra["token_logprobs"]) == list(preds[1].extra["token_logprobs"])
    assert back[-3].scores[1] is None and math.isnan(back[-3].scores[0])  # None != NaN
    # the likelihood arrays are binary, not JSON; the odd-shaped ones stay JSON
    raw = store._query("SELECT extra_json, scores_json, logprobs FROM predictions ORDER BY seq")
    assert '"token_logprobs":null' in raw[0][0] and raw[0][1] is None and raw[0][2]
    assert [list(p.extra) for p in back] == [list(p.extra) for p in preds]  # key order kept
    assert "not a class" in raw[-2][0]
    # the image-free prior is stored once however many rows carry it
    n_priors = store._query("SELECT count(DISTINCT image_free) FROM predictions")[0][0]
    assert n_priors == 2  # open and closed world: two distinct priors


def test_unknown_run_reads_empty(store: RunStore) -> None:
    assert store.predictions("nope") == [] and len(store.columns("nope")) == 0


def test_deleting_a_run_drops_its_shared_arrays(store: RunStore) -> None:
    store.add_predictions("r", [likelihood_prediction(i) for i in range(3)])
    assert store._query("SELECT count(*) FROM arrays")[0][0] > 0
    store.delete_run("r")
    assert store._query("SELECT count(*) FROM arrays")[0][0] == 0


def test_a_998_class_likelihood_row_is_small(tmp_path: Path) -> None:
    names = [f"class {i}" for i in range(998)]
    rng = np.random.default_rng(0)
    with RunStore(tmp_path / "big.db") as s:
        s.start_run("r", "{}", names, 1)
        logprobs = {n: (-rng.gamma(2, 2, 3 + i % 3)).astype(np.float32).tolist()
                    for i, n in enumerate(names)}  # fmt: skip
        scores = [math.fsum(v) for v in logprobs.values()]
        s.add_predictions("r", [Prediction("a", 0, scores=scores, extra={
            "token_logprobs": logprobs, "image_free": logprobs})])  # fmt: skip
        size = s._query("SELECT length(scores_packed) + length(logprobs) FROM predictions")[0][0]
        assert size < 25_000
        assert s.predictions("r")[0].extra["token_logprobs"] == logprobs


def make_v3_store(path: Path, preds: list[Prediction], names: list[str]) -> None:
    """A store as schema 3 wrote it: JSON scores and extra."""
    db = sqlite3.connect(path)
    db.executescript(_SCHEMA_V1 + _SCHEMA_V2 + _SCHEMA_V3)
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute("PRAGMA user_version = 3")
    db.execute("INSERT INTO runs (run_id, spec_json, class_names_json, status, n_total, created_at,"
               " updated_at) VALUES ('r', '{}', ?, 'done', ?, 't', 't')",
               (json.dumps(names), len(preds)))  # fmt: skip
    for seq, p in enumerate(preds):
        db.execute(
            "INSERT INTO predictions (run_id, example_id, seq, label, ok, error, text, scores_json,"
            " choices_json, pred, hit, seconds, extra_json, outcome, flag)"
            " VALUES ('r', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (p.example_id, seq, p.label, int(p.ok), p.error, p.text,
             None if p.scores is None else dumps(p.scores),
             None if p.choices is None else dumps(p.choices), p.pred,
             None if p.hit is None else int(p.hit), p.seconds, dumps(p.extra), p.outcome, p.flag),
        )  # fmt: skip
    db.commit()
    db.close()


def test_v3_store_is_migrated_and_reads_old_and_new_rows(tmp_path: Path) -> None:
    old = [likelihood_prediction(i) for i in range(4)] + [Prediction.transient("t", 0, "oom")]
    path = tmp_path / "v3.db"
    make_v3_store(path, old, NAMES)
    with RunStore(path, read_only=True) as s:  # read-only: no upgrade, still readable
        assert s.schema_version == 3
        assert bits([p.__dict__ for p in s.predictions("r")]) == bits([p.__dict__ for p in old])
        assert len(s.columns("r")) == 5
    with RunStore(path) as s:
        assert s.schema_version == SCHEMA_VERSION
        new = [likelihood_prediction(i + 10) for i in range(3)]
        assert s.add_predictions("r", new) == 3
        retried = likelihood_prediction(99)
        retried.example_id = "t"  # the transient failure, answered now: replaced in its place
        assert s.add_predictions("r", [retried]) == 1
        expected = [*old[:4], retried, *new]
        back = s.predictions("r")
        assert bits([p.__dict__ for p in back]) == bits([p.__dict__ for p in expected])
        assert s.done_ids("r") == {p.example_id for p in expected}
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
