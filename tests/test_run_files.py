"""Results files per run (`--output-path`, `--log-samples`), `export` with class names and image
paths in JSONL and Parquet of the same types, and `results` columns that tell runs apart:
through the real CLI on tiny random models and a real image folder."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fixtures_data import write_noisy_colour_folder
from output_files import read_output_files
from typer.testing import CliRunner

import vlmclf
from vlmclf.cli import app
from vlmclf.store import RunStore
from vlmclf.store.arrays import pack_scores


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_noisy_colour_folder(tmp_path_factory.mktemp("files"), per_class=2, seed=1,
                                     noise=10.0)  # fmt: skip


def invoke(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result.output


def closed_eval(folder: Path, store: Path, *extra: str) -> list[str]:
    return ["eval", "--model", "random:llava", "--method", "generate", "--setting", "closed",
            "--k", "2", "--max-new-tokens", "4", "--dataset", "imagefolder", "--data-root",
            str(folder), "--store", str(store), "--no-progress", *extra]  # fmt: skip


def test_output_path_writes_results_json_and_samples_log(folder: Path, tmp_path: Path):
    store, out = tmp_path / "runs.sqlite", tmp_path / "out"
    printed = invoke(*closed_eval(folder, store, "--json", "--output-path", str(out),
                                  "--log-samples"))  # fmt: skip
    summary = json.loads(printed.strip().splitlines()[-1])
    run_id = summary["run_id"]
    results, samples = read_output_files(out, run_id)
    with RunStore(store, read_only=True) as runs:
        record = runs.get_run(run_id)
        stored = {p.example_id: p for p in runs.predictions(run_id)}
    assert results["summary"] == summary and results["status"] == "done"
    assert results["identity"] == record.identity and results["identity"]["spec"]["k"] == 2
    assert results["protocol"] == summary["protocol"] and results["protocol"]["name"] == "clean"
    assert results["versions"]["torch"] and results["versions"]["transformers"]
    head = subprocess.run(["git", "-C", str(Path(vlmclf.__file__).parent), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    assert results["vlmclf_git_revision"] == (head or None)
    assert results["class_names"] == ["blue", "green", "red"]

    assert len(samples) == 6 == len(stored)
    for row in samples:
        p = stored[row["example_id"]]
        assert Path(row["image"]) == (folder / row["example_id"]).resolve()
        assert row["label_name"] == Path(row["image"]).parent.name
        assert row["answer"] == p.text and row["hit"] == p.hit
        offered = ", ".join(row["choices"])
        question = "What type of object is in this photo?"
        assert row["prompt"] == f'{question} Choose one from "{offered}".'
        assert row["label_name"] in row["choices"] and len(row["choices"]) == 2
        assert row["pred_name"] == (None if p.pred is None else results["class_names"][p.pred])


def test_output_path_problems_are_found_before_any_work(folder: Path, tmp_path: Path):
    store = tmp_path / "runs.sqlite"
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    output = invoke(*closed_eval(folder, store, "--output-path", str(blocker / "sub")), code=2)
    assert output.startswith(f"error: --output-path {blocker / 'sub'}:")
    output = invoke(*closed_eval(folder, store, "--log-samples"), code=2)
    assert "error: --log-samples writes into --output-path DIR" in output
    assert not store.exists()  # nothing ran, nothing stored


def test_evaluate_writes_the_same_files(folder: Path, tmp_path: Path):
    result = vlmclf.evaluate(model="random:clip", dataset="imagefolder", method="clip",
                             store=tmp_path / "s.sqlite", data_root=str(folder), progress=False,
                             output_path=tmp_path / "o", log_samples=True)  # fmt: skip
    results = json.loads((tmp_path / "o" / f"results_{result.run_id}.json").read_text())
    assert results["summary"] == result.summary
    samples = (tmp_path / "o" / f"samples_{result.run_id}.jsonl").read_text().splitlines()
    assert [json.loads(s)["prompt"] for s in samples] == [None] * 6  # CLIP is asked nothing


def give_one_row_nan_and_infinite_floats(store: Path, run_id: str) -> str:
    """A row whose scores hold NaN and -inf and whose time is NaN (stored as NULL), as a model
    in float16 or a lost clock leaves them; returns its example id."""
    with sqlite3.connect(store) as db:
        (example_id,) = db.execute("SELECT min(example_id) FROM predictions WHERE run_id = ?",
                                   (run_id,)).fetchone()  # fmt: skip
        packed, nones = pack_scores([math.nan, 0.25, -math.inf])
        db.execute("UPDATE predictions SET scores_packed = ?, scores_none = ?, scores_json = NULL,"
                   " seconds = NULL WHERE run_id = ? AND example_id = ?",
                   (packed, nones, run_id, example_id))  # fmt: skip
    with RunStore(store, read_only=True) as runs:
        (stored,) = [p for p in runs.predictions(run_id) if p.example_id == example_id]
    assert stored.scores[1] == 0.25 and math.isnan(stored.scores[0]) and math.isnan(stored.seconds)
    return example_id


def test_export_names_classes_and_images_with_the_same_types(folder: Path, tmp_path: Path):
    store = tmp_path / "runs.sqlite"
    run_id = json.loads(invoke(*closed_eval(folder, store, "--json")).strip().splitlines()[-1])[
        "run_id"
    ]
    odd = give_one_row_nan_and_infinite_floats(store, run_id)
    invoke("export", run_id, "--store", str(store), "--out-file", str(tmp_path / "p.jsonl"))
    invoke("export", run_id, "--store", str(store), "--format", "parquet", "--out-file",
           str(tmp_path / "p.parquet"))  # fmt: skip
    lines = [json.loads(s) for s in (tmp_path / "p.jsonl").read_text().splitlines()]
    table = pq.read_table(tmp_path / "p.parquet")
    assert table.schema.names == list(lines[0])  # the same columns, in the same order
    assert table.to_pylist() == lines  # and the same values, of the same types
    (row,) = [r for r in lines if r["example_id"] == odd]
    assert row["scores"] == [None, 0.25, None] and row["seconds"] is None  # JSON has no NaN
    python_type = {"string": str, "int64": int, "bool": bool, "double": float}
    for field in table.schema:
        kind = python_type.get(str(field.type), list)
        assert all(row[field.name] is None or isinstance(row[field.name], kind) for row in lines), (
            field.name
        )
    for row in lines:
        assert row["label_name"] == Path(row["image"]).parent.name
        assert Path(row["image"]) == (folder / row["example_id"]).resolve()
        assert isinstance(row["extra"], str) and json.loads(row["extra"]) == {}


def test_export_of_a_run_whose_data_moved_leaves_images_empty(tmp_path: Path):
    moving = write_noisy_colour_folder(tmp_path / "moving", per_class=1, seed=2, noise=5.0)
    store = tmp_path / "runs.sqlite"
    args = ["eval", "--model", "random:clip", "--method", "clip", "--dataset", "imagefolder",
            "--data-root", str(moving), "--store", str(store), "--no-progress",
            "--json"]  # fmt: skip
    run_id = json.loads(invoke(*args).strip().splitlines()[-1])["run_id"]
    moving.rename(tmp_path / "moved")
    result = CliRunner().invoke(app, ["export", run_id, "--store", str(store), "--out-file",
                                      str(tmp_path / "p.jsonl")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning: image paths left empty:" in result.stderr
    rows = [json.loads(s) for s in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["image"] for r in rows] == [None] * 3 and rows[0]["label_name"]


def test_results_tell_apart_runs_that_differ_by_protocol_prompt_or_prefix(
    folder: Path, tmp_path: Path
):
    store = tmp_path / "runs.sqlite"
    base = ["eval", "--model", "random:llava", "--dataset", "imagefolder", "--data-root",
            str(folder), "--store", str(store), "--no-progress", "--limit", "2"]  # fmt: skip
    invoke(*base, "--method", "generate", "--max-new-tokens", "3")
    invoke(*base, "--method", "generate", "--max-new-tokens", "3", "--prompt", "alt1")
    invoke(*base, "--method", "generate", "--max-new-tokens", "3", "--protocol", "paper")
    invoke(*base, "--method", "likelihood", "--answer-prefix", "It is a")
    rows = json.loads(invoke("results", "--store", str(store), "--format", "json"))
    settings = sorted(row["settings"] for row in rows)
    assert len(set(settings)) == 4
    assert any("prompt=alt1" in s for s in settings)
    assert any("protocol=paper" in s for s in settings)
    assert any('answer_prefix="It is a"' in s for s in settings)
    table = invoke("results", "--store", str(store))
    assert "settings" in table.splitlines()[0] and "protocol=paper" in table


def test_sweep_output_path_writes_every_cells_results(folder: Path, tmp_path: Path):
    store, out = tmp_path / "runs.sqlite", tmp_path / "files"
    args = ["sweep", "--model", "random:llava", "--dataset", "imagefolder", "--data-root",
            str(folder), "--axis", "k=2,3", "--max-new-tokens", "2", "--store", str(store),
            "--out", str(tmp_path / "o"), "--no-progress", "--json", "--output-path", str(out),
            "--log-samples"]  # fmt: skip
    result = json.loads(invoke(*args).strip().splitlines()[-1])
    run_ids = sorted(row["run_id"] for row in result["rows"])
    assert len(run_ids) == 2
    assert sorted(p.name for p in out.glob("results_*.json")) == [
        f"results_{r}.json" for r in run_ids]  # fmt: skip
    with RunStore(store, read_only=True) as runs:
        for run_id in run_ids:
            document = json.loads((out / f"results_{run_id}.json").read_text())
            stored = runs.get_run(run_id).meta["summary"]
            assert document["summary"]["accuracy"] == stored["accuracy"]
            k = document["identity"]["spec"].get("k", 3)  # k=3 of 3 classes: all, the default
            samples = (out / f"samples_{run_id}.jsonl").read_text().splitlines()
            assert len(samples) == stored["n"] == 6
            assert all(len(json.loads(s)["choices"]) == k for s in samples)


def test_a_samples_log_that_fails_half_way_leaves_no_partial_file(tmp_path: Path):
    from vlmclf.run.run_files import write_results

    def rows():
        yield {"example_id": "a"}
        raise ValueError("the dataset moved")

    with pytest.raises(ValueError, match="the dataset moved"):
        write_results(tmp_path, "abc", {"version": 1}, rows())
    assert [p.name for p in tmp_path.iterdir()] == ["results_abc.json"]  # no samples_*.partial
