"""The run store on real SQLite files: resume, crash safety, export, bad files."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from vlmclf.records import Prediction
from vlmclf.store import SCHEMA_VERSION, RunStore, StoreError
from vlmclf.store.json_safe import from_json_safe

NAMES = ["cat", "dog", "missile", "missile", "bird"]
TRICKY_FLOATS = [0.1 + 0.2, 5e-324, -0.0, 1.7976931348623157e308, math.nan, math.inf, -math.inf]


def make_pred(i: int) -> Prediction:
    """A deterministic prediction exercising every field."""
    if i % 7 == 3:
        return Prediction.failed(f"ex{i:04d}", i % 5, f"bad image {i}")
    scores: list[float | None] = [math.sqrt(i + c) / 3 for c in range(5)]
    scores[i % 5] = None
    return Prediction(
        example_id=f"ex{i:04d}",
        label=i % 5,
        text=f"a photo of a {NAMES[i % 5]} ✓ {i}",
        scores=scores,
        choices=[i % 5, (i + 1) % 5],
        pred=None if i % 11 == 0 else (i * 3) % 5,
        hit=None if i % 4 == 0 else bool(i % 2),
        seconds=1 / (i + 3),
        extra={"tokens": i, "logprob": -i / 7, "nested": {"v": [1.5, None, "x"]}},
    )


def same_prediction(a: Prediction, b: Prediction) -> bool:
    """Field equality where NaN equals NaN and -0.0 differs from 0.0 (bit-exact floats)."""
    return _bits(a.__dict__) == _bits(b.__dict__)


def _bits(x: object) -> object:
    if isinstance(x, float):
        return ("float", x.hex()) if not math.isnan(x) else ("float", "nan")
    if isinstance(x, dict):
        return {k: _bits(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_bits(v) for v in x]
    return x


@pytest.fixture
def store(tmp_path: Path):
    with RunStore(tmp_path / "runs.db") as s:
        s.start_run("r1", json.dumps({"model": "m", "k": 5}), NAMES, 40)
        yield s


def test_new_store_is_wal_with_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "runs.db"
    RunStore(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_predictions_round_trip_every_field(store: RunStore) -> None:
    preds = [make_pred(i) for i in range(30)]
    assert store.add_predictions("r1", preds) == 30
    back = store.predictions("r1")
    assert [p.example_id for p in back] == [p.example_id for p in preds]
    assert all(same_prediction(a, b) for a, b in zip(preds, back, strict=True))
    assert not same_prediction(make_pred(1), make_pred(2))  # the comparison can fail


def test_floats_round_trip_bit_exact(store: RunStore) -> None:
    scores = TRICKY_FLOATS[:5]
    p = Prediction("f", 0, scores=list(scores), seconds=0.1 + 0.2, extra={"x": TRICKY_FLOATS})
    store.add_predictions("r1", [p, Prediction("g", 1, scores=list(np.float32([0.1] * 5)))])
    back = {q.example_id: q for q in store.predictions("r1")}
    assert same_prediction(back["f"], p)
    assert math.copysign(1.0, back["f"].scores[2]) == -1.0
    assert back["g"].scores[0] == float(np.float32(0.1))
    raw = store._query("SELECT extra_json FROM predictions WHERE example_id='f'")
    for text in raw[0]:  # scores are packed binary since schema 4; what is JSON stays valid
        json.loads(text, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))


def test_resume_skips_done_and_never_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with RunStore(path) as s:
        s.start_run("r1", "{}", NAMES, 20)
        assert s.add_predictions("r1", [make_pred(i) for i in range(10)]) == 10
        s.finish_run("r1", "interrupted", 2.5, {"tokens": 100})
    with RunStore(path) as s:
        assert s.done_ids("r1") == {f"ex{i:04d}" for i in range(10)}
        s.start_run("r1", "{}", NAMES, 25)
        rec = s.get_run("r1")
        assert (rec.status, rec.n_total, rec.n_done) == ("running", 25, 10)
        batch = [make_pred(i) for i in range(5, 15)] + [make_pred(14)]  # overlap + in-batch dup
        assert s.add_predictions("r1", batch) == 5
        assert s.add_predictions("r1", batch) == 0
        back = s.predictions("r1")
        assert [p.example_id for p in back] == [f"ex{i:04d}" for i in range(15)]
        seqs = s._query("SELECT seq FROM predictions WHERE run_id='r1' ORDER BY seq")
        assert [r[0] for r in seqs] == list(range(15))
        s.finish_run("r1", "done", 1.25, {"cost": 0.5})
        rec = s.get_run("r1")
        assert rec.elapsed_s == 3.75 and rec.meta == {"tokens": 100, "cost": 0.5}
        assert rec.status == "done" and rec.n_failed == sum(not p.ok for p in back) == 2


def test_start_run_refuses_a_different_class_list(store: RunStore) -> None:
    store.add_predictions("r1", [make_pred(0)])
    with pytest.raises(ValueError, match="different class-name list"):
        store.start_run("r1", "{}", NAMES[::-1], 40)
    assert len(store.predictions("r1")) == 1


def test_runs_listing_and_delete(store: RunStore) -> None:
    store.start_run("r2", '{"model": "other"}', ["a", "b"], 3)
    store.add_predictions("r1", [make_pred(i) for i in range(4)])
    store.add_predictions("r2", [Prediction("x", 1, pred=1, hit=True)])
    assert [r.run_id for r in store.list_runs()] == ["r1", "r2"]
    r2 = store.get_run("r2")
    assert r2.spec == {"model": "other"} and r2.class_names == ["a", "b"] and r2.n_done == 1
    store.delete_run("r1")
    assert store.get_run("r1") is None and store.predictions("r1") == []
    assert store.done_ids("r2") == {"x"}
    assert store._query("SELECT count(*) FROM predictions")[0][0] == 1


@pytest.mark.parametrize(
    ("pred", "message"),
    [
        (Prediction("a", 5), "label=5 is outside"),
        (Prediction("a", 0, pred=-1), "pred=-1 is outside"),
        (Prediction("a", 0, scores=[0.0] * 4), "scores has 4 entries"),
        (Prediction("a", 0, choices=[0, 9]), "choices=9 is outside"),
        (Prediction("a", 1.5), "label=1.5 is not an integer"),
    ],
)
def test_bad_predictions_are_rejected_whole_batch(store, pred, message) -> None:
    with pytest.raises(ValueError, match=message):
        store.add_predictions("r1", [make_pred(0), pred])
    assert store.done_ids("r1") == set()


def test_unknown_run_and_bad_status(store: RunStore) -> None:
    with pytest.raises(KeyError, match="start_run first"):
        store.add_predictions("nope", [make_pred(0)])
    with pytest.raises(ValueError, match="status must be one of"):
        store.finish_run("r1", "running", 1.0)
    with pytest.raises(ValueError, match="spec_json is not a JSON object"):
        store.start_run("r3", "[1, 2]", NAMES, 1)


def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is not a database at all\n" * 200)
    with pytest.raises(StoreError, match="notes.db"):
        RunStore(path)


def test_foreign_and_newer_sqlite_files_are_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "other.sqlite"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=r"other\.sqlite: SQLite file is not a vlmclf store"):
        RunStore(foreign)
    newer = tmp_path / "newer.db"
    RunStore(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer.db: store schema version"):
        RunStore(newer)
    with pytest.raises(FileNotFoundError, match="missing.db"):
        RunStore(tmp_path / "missing.db", create=False)


def test_corrupt_pages_are_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with RunStore(path) as s:
        s.start_run("r1", "{}", NAMES, 400)
        s.add_predictions("r1", [make_pred(i) for i in range(400)])
    data = bytearray(path.read_bytes())
    assert len(data) > 8 * 4096
    data[4096:] = b"\xa5" * (len(data) - 4096)  # keep the header, smash every other page
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="runs.db"), RunStore(path) as s:
        s.predictions("r1")


def stored_fields(row: dict) -> Prediction:
    """The Prediction an exported row holds (its names and image are added on export)."""
    added = ("run_id", "image", "label_name", "pred_name", "extra")
    p = Prediction(**{k: v for k, v in row.items() if k not in added})
    p.extra = json.loads(row["extra"], object_hook=from_json_safe)
    return p


def as_exported(p: Prediction) -> Prediction:
    """``p`` as an export holds it: a NaN or infinite score or ``seconds`` is null (JSON has
    neither), ``extra`` keeps its exact values."""

    def finite(value: float | None) -> float | None:
        return value if value is None or math.isfinite(value) else None

    scores = None if p.scores is None else [finite(s) for s in p.scores]
    return dataclasses.replace(p, scores=scores, seconds=finite(p.seconds))


def test_export_jsonl_and_parquet_round_trip(store: RunStore, tmp_path: Path) -> None:
    tricky = Prediction("nan", 0, scores=TRICKY_FLOATS[2:], seconds=math.inf,
                        extra={"logprobs": TRICKY_FLOATS})  # fmt: skip
    preds = [make_pred(i) for i in range(20)] + [tricky]
    store.add_predictions("r1", preds)
    assert store.export("r1", tmp_path / "out" / "p.jsonl", "jsonl") == 21
    lines = (tmp_path / "out" / "p.jsonl").read_text().splitlines()
    rows = [json.loads(line, parse_constant=pytest.fail) for line in lines]
    assert {r["run_id"] for r in rows} == {"r1"}
    assert rows[-1]["scores"] == [-0.0, TRICKY_FLOATS[3], None, None, None]
    assert rows[-1]["seconds"] is None
    back = [stored_fields(r) for r in rows]
    assert all(same_prediction(as_exported(a), b) for a, b in zip(preds, back, strict=True))

    assert store.export("r1", tmp_path / "p.parquet", "parquet") == 21
    table = pq.read_table(tmp_path / "p.parquet")
    assert str(table.schema.field("scores").type) == "list<element: double>"
    assert str(table.schema.field("choices").type) == "list<element: int64>"
    assert table.to_pylist() == rows  # the same values, None where JSON has no float
    for p, row in zip(preds, table.to_pylist(), strict=True):
        assert row["run_id"] == "r1"
        assert same_prediction(as_exported(p), stored_fields(row))
    with pytest.raises(ValueError, match="export format"):
        store.export("r1", tmp_path / "p.csv", "csv")  # type: ignore[arg-type]


WRITER = """
import math, sys
from vlmclf.records import Prediction

def expected(i):
    return Prediction(example_id=f"id{i:05d}", label=i % 4, text=f"t{i}", pred=(i * 7) % 4,
                      hit=bool(i % 3), scores=[math.sin(i + c) for c in range(4)],
                      seconds=i / 3, extra={"i": i})

if __name__ == "__main__":
    from vlmclf.store import RunStore
    path, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = RunStore(path)
    store.start_run("run", "{}", ["a", "b", "c", "d"], n)
    written = 0
    for start in range(0, n, batch):
        written += store.add_predictions("run", [expected(i) for i in range(start, start + batch)])
        print(written, flush=True)
    print("finished", flush=True)
    sys.stdin.read()  # wait to be killed
"""


def test_sigkill_mid_run_loses_nothing_committed(tmp_path: Path) -> None:
    n, batch = 20_000, 10
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(WRITER))
    spec = importlib.util.spec_from_file_location("writer", script)
    writer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(writer)
    path = tmp_path / "runs.db"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), str(n), str(batch)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        reported = 0
        while reported < 500:
            line = proc.stdout.readline()
            assert line, "writer exited early"
            reported = n if line.strip() == "finished" else int(line)
        with RunStore(path) as reader:  # a concurrent reader while the writer runs
            seen = reader.predictions("run")
            assert len(seen) >= reported
            assert all(same_prediction(p, writer.expected(int(p.example_id[2:]))) for p in seen)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with RunStore(path) as s:
        kept = s.predictions("run")
        assert len(kept) >= reported and len(kept) % batch == 0  # whole batches only
        assert all(same_prediction(p, writer.expected(int(p.example_id[2:]))) for p in kept)
        done = s.done_ids("run")
        s.start_run("run", "{}", ["a", "b", "c", "d"], n)
        todo = [writer.expected(i) for i in range(n) if f"id{i:05d}" not in done]
        assert s.add_predictions("run", todo) == n - len(done)
        assert s.add_predictions("run", [writer.expected(i) for i in range(0, n, 97)]) == 0
        final = s.predictions("run")
        assert len(final) == n == len({p.example_id for p in final})
        assert s.get_run("run").n_done == n


def test_analyses_are_stored_replaced_and_listed(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    with RunStore(path) as store:
        first = store.save_analysis("probe", {"model": "m", "layer": -1}, {"acc": 0.5})
        again = store.save_analysis("probe", {"layer": -1, "model": "m"}, {"acc": 0.75})
        other = store.save_analysis("sweep", {"model": "m"}, {"rows": [1, 2]})
    assert first == again and first != other
    with RunStore(path) as store:
        assert store.get_analysis(first).result == {"acc": 0.75}
        assert [a.kind for a in store.list_analyses()] == ["probe", "sweep"]
        assert [a.analysis_id for a in store.list_analyses("sweep")] == [other]
        assert store.get_analysis("missing") is None
