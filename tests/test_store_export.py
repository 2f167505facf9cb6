"""Export streams a run in chunks and writes what writing the whole list at once wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_store_packed import NAMES, likelihood_prediction

from vlmclf.records import Prediction
from vlmclf.store import RunStore
from vlmclf.store.export import RunNames, write_jsonl, write_parquet

ROOT = Path(__file__).parents[1]


def fill(store: RunStore, n: int) -> list[Prediction]:
    store.start_run("r", json.dumps({"m": 1}), NAMES, n)
    preds = [likelihood_prediction(i, closed=i % 5 == 1, prior=i % 2 == 0) for i in range(n)]
    preds[3] = Prediction.failed("ex3", 0, "unreadable ✗")
    preds[4].scores = [None] * len(NAMES)
    store.add_predictions("r", preds)
    return preds


def test_export_reads_in_chunks_and_equals_the_whole_list_export(tmp_path, monkeypatch) -> None:
    with RunStore(tmp_path / "s.db") as store:
        fill(store, 70)
        pages: list[int] = []
        original = RunStore._row_pages

        def counting(self, run_id, select, chunk_rows):
            for rows in original(self, run_id, select, chunk_rows):
                pages.append(len(rows))
                yield rows

        monkeypatch.setattr(RunStore, "_row_pages", counting)
        monkeypatch.setattr("vlmclf.store.run_store.EXPORT_CHUNK_ROWS", 16)
        assert store.export("r", tmp_path / "a.jsonl", "jsonl") == 70
        assert pages == [16, 16, 16, 16, 6]  # never more than a chunk in memory
        assert store.export("r", tmp_path / "a.parquet", "parquet") == 70
        whole = [store.predictions("r")]  # the reference: everything at once, as before
        names = RunNames(NAMES)
        write_jsonl(tmp_path / "b.jsonl", "r", whole, names)
        write_parquet(tmp_path / "b.parquet", "r", whole, names)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert pq.read_table(tmp_path / "a.parquet").equals(pq.read_table(tmp_path / "b.parquet"))
    assert pq.ParquetFile(tmp_path / "a.parquet").metadata.num_row_groups == 5


def test_empty_run_exports_an_empty_file_with_the_schema(tmp_path) -> None:
    with RunStore(tmp_path / "s.db") as store:
        store.start_run("r", "{}", NAMES, 0)
        assert store.export("r", tmp_path / "e.parquet", "parquet") == 0
        assert store.export("r", tmp_path / "e.jsonl", "jsonl") == 0
    assert pq.read_table(tmp_path / "e.parquet").num_rows == 0
    assert "scores" in pq.read_table(tmp_path / "e.parquet").schema.names
    assert (tmp_path / "e.jsonl").read_text() == ""


def run_bench(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "bench" / "store.py"), *args, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.slow
def test_bench_store_runs_small() -> None:
    result = run_bench("--n", "12", "--old-n", "6", "--export-n", "6")
    assert result["jsonl_exports_identical"]
    new, old = result["new"], result["old"]
    assert new["with_prior"]["rows"] == 12 and old["with_prior"]["rows"] == 6
    assert old["with_prior"]["bytes_per_prediction"] > 5 * new["with_prior"]["bytes_per_prediction"]
    assert new["summary"]["top5"] is not None and new["summary"]["peak_rss_mb"] > 0
