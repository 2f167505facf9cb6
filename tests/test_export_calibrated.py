"""``vlmclf export`` of a ``--cfg T --calibration dataset_mean`` run writes the calibrated
scores, pred and hit (issue 25, item 8): the exported hits give the summary's accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.test_eval import CLASSES, eval_json, make_image_folder
from vlmclf.cli import app
from vlmclf.store import RunStore


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_of_a_calibrated_run_is_what_the_summary_counts(tmp_path: Path, fmt: str):
    folder = make_image_folder(tmp_path / "images", per_class=4, seed=5)
    store = tmp_path / "runs.sqlite"
    summary = eval_json(
        "--model", "random:llava", "--dataset", "imagefolder", "--data-root", str(folder),
        "--store", str(store), "--method", "likelihood", "--cfg", "5",
        "--calibration", "dataset_mean", "--batch-size", "4",
    )  # fmt: skip
    out = tmp_path / f"p.{fmt}"
    args = ["export", summary["run_id"], "--store", str(store), "--format", fmt,
            "--out-file", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = _read(out, fmt)
    n = len(CLASSES) * 4
    assert len(rows) == n == summary["n"]
    assert sum(bool(r["hit"]) for r in rows) / n == pytest.approx(summary["accuracy"])
    assert all("pending_calibration" not in (r["extra"] or {}) for r in rows)

    # the stored rows are the uncalibrated ones, and here they differ from what was exported
    with RunStore(store, read_only=True) as runs:
        raw = {p.example_id: p for p in runs.predictions(summary["run_id"])}
    assert all("pending_calibration" in p.extra for p in raw.values())
    assert any(raw[r["example_id"]].pred != r["pred"] for r in rows)
    for r in rows:  # each exported pred is the argmax of its exported (calibrated) scores
        assert r["pred"] == max(range(len(r["scores"])), key=lambda i: r["scores"][i])


def _read(path: Path, fmt: str) -> list[dict]:
    if fmt == "jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    for row in rows:
        for key in ("extra", "scores"):
            if isinstance(row.get(key), str):
                row[key] = json.loads(row[key])
    return rows
