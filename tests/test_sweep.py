"""`vlmclf sweep`: the grid, RunSpecs per cell, reuse of stored runs, tables and figures."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from vlmclf.analysis.sweep.report import relative_errors
from vlmclf.analysis.sweep.run import SweepCell, cell_spec, parse_axes, parse_axis, run_sweep
from vlmclf.commands.sweep import sweep_command
from vlmclf.run.runner import RunConfig
from vlmclf.store import RunStore


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Three classes, two 16 px images each: six examples."""
    root = tmp_path / "images"
    for name, colour in (("cat", (200, 40, 40)), ("dog", (40, 200, 40)), ("bird", (40, 40, 200))):
        (root / name).mkdir(parents=True)
        for i in range(2):
            image = Image.new("RGB", (16, 16), tuple(c + 20 * i for c in colour))
            image.save(root / name / f"{i}.png")
    return root


def _prediction_rows(store: Path) -> int:
    with sqlite3.connect(store) as conn:
        return conn.execute("SELECT count(*) FROM predictions").fetchone()[0]


def _cell(**values: str) -> SweepCell:
    from vlmclf.analysis.sweep.run import DEFAULTS

    return SweepCell("random:llava", "imagefolder", DEFAULTS | values)


def test_axes_parse_and_reject_bad_values() -> None:
    assert parse_axis("k=2, 5,ALL,open") == ("k", ["2", "5", "all", "open"])
    assert parse_axis("cot=no,yes") == ("cot", ["false", "true"])
    assert parse_axis("strategy=likelihood,cfg:1.50") == ("strategy", ["likelihood-sum", "cfg:1.5"])
    for bad, message in (("k=1", "integer >= 2"), ("size=2", "NAME in"), ("order=up", "fixed"),
                         ("strategy=beam", "use generate"), ("k=2,2", "repeated"),
                         ("cot=", "no values")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            parse_axis(bad)
    with pytest.raises(ValueError, match="given twice"):
        parse_axes(["k=2", "k=5"])


def test_cells_map_to_the_runspecs_eval_would_build() -> None:
    generate = cell_spec(_cell(k="5", order="random"), n_distinct=10, seed=3)
    assert (generate.method, generate.setting, generate.k, generate.order, generate.seed) == (
        "generate", "closed", 5, "random", 3)  # fmt: skip
    everything = cell_spec(_cell(k="20"), n_distinct=10)
    assert everything.k is None and everything == cell_spec(_cell(k="all"), n_distinct=10)
    opened = cell_spec(_cell(k="open", order="random"), n_distinct=10)
    assert opened.setting == "open" and opened.order == "fixed"  # order means nothing when open
    assert cell_spec(_cell(strategy="likelihood-sum"), 10).options == {}  # = eval's default run
    assert cell_spec(_cell(strategy="likelihood-mean"), 10).options == {"agg": "mean"}
    assert cell_spec(_cell(strategy="cfg:1.5"), 10).options == {"cfg": 1.5}
    clip = cell_spec(_cell(strategy="clip", k="2", prompt="alt1", cot="true"), 10)
    assert (clip.method, clip.k, clip.prompt, clip.cot) == ("clip", 2, "base", False)


def test_relative_error_is_error_over_the_smallest_k_error() -> None:
    assert relative_errors([0.8, 0.6, None, 0.2]) == pytest.approx([1.0, 2.0, None, 4.0])
    assert relative_errors([1.0, 0.5]) == [None, None]


def test_sweep_runs_every_cell_reuses_stored_runs_and_writes_files(
    image_folder: Path, tmp_path: Path
) -> None:
    store, out = tmp_path / "runs.sqlite", tmp_path / "report"
    app = typer.Typer()
    app.command()(sweep_command)
    args = ["--model", "random:llava", "--dataset", "imagefolder",
            "--data-root", str(image_folder), "--axis", "k=2,all",
            "--axis", "strategy=generate,likelihood-mean", "--axis", "order=fixed,random",
            "--limit", "6", "--max-new-tokens", "4", "--store", str(store),
            "--out", str(out), "--no-progress", "--workers", "1", "--json"]  # fmt: skip
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    result = json.loads(first.output)
    rows = result["rows"]
    assert len(rows) == 8 and all(row["error"] is None and row["n"] == 6 for row in rows)
    assert {(r["k"], r["strategy"], r["order"]) for r in rows} == {
        (k, s, o) for k in ("2", "all") for s in ("generate", "likelihood-mean")
        for o in ("fixed", "random")}  # fmt: skip
    assert len({r["run_id"] for r in rows}) == 8
    stored = _prediction_rows(store)
    assert stored == 8 * 6
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    assert _prediction_rows(store) == stored  # nothing recomputed
    assert all(r["newly_done"] == 0 for r in json.loads(second.output)["rows"])
    files = result["files"]
    for name in ("table_long", "csv_long", "table_by_k", "table_by_strategy", "table_by_order",
                 "table_relative_error", "figure_accuracy_vs_k", "figure_relative_error",
                 "figure_axes"):  # fmt: skip
        assert Path(files[name]).stat().st_size > 0, name
    with open(files["csv_by_k"], newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 4 and {"k=2", "k=all", "order", "strategy"} <= table[0].keys()
    with RunStore(store) as runs:
        analysis = runs.get_analysis(result["analysis_id"])
        likelihood = runs.predictions(rows[1]["run_id"])
    assert analysis.kind == "sweep" and len(analysis.result["rows"]) == 8
    assert rows[1]["strategy"] == "likelihood-mean" and all(p.scores for p in likelihood)


def test_every_model_sees_the_same_choices_and_failures_are_recorded(
    image_folder: Path, tmp_path: Path
) -> None:
    config = RunConfig(store_path=tmp_path / "s.sqlite", data_root=str(image_folder), limit=6,
                       progress=False, workers=1)  # fmt: skip
    result = run_sweep(["random:llava", "random:blip2"], ["imagefolder"],
                       {"k": ["2"], "order": ["random"], "strategy": ["generate", "clip"]},
                       config, seed=5, max_new_tokens=3)  # fmt: skip
    ran = [r for r in result["rows"] if r["strategy"] == "generate"]
    failed = [r for r in result["rows"] if r["strategy"] == "clip"]
    assert len(ran) == 2 and all(r["error"] is None for r in ran)
    assert len(failed) == 2 and all("CLIP-style model" in r["error"] for r in failed)
    with RunStore(config.store_path) as store:
        choices = [{p.example_id: p.choices for p in store.predictions(r["run_id"])} for r in ran]
    assert choices[0] == choices[1] and len(choices[0]) == 6
    assert all(len(c) == 2 for c in choices[0].values())
    assert result["files"] == {}  # no out_dir: nothing written


def test_sweep_command_fails_clearly(image_folder: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(sweep_command)
    base = ["--model", "random:llava", "--dataset", "imagefolder", "--data-root",
            str(image_folder), "--store", str(tmp_path / "s.sqlite"), "--no-progress"]  # fmt: skip
    bad_axis = CliRunner().invoke(app, [*base, "--axis", "k=1"])
    assert bad_axis.exit_code == 2 and "integer >= 2" in bad_axis.output
    all_failed = CliRunner().invoke(app, [*base, "--axis", "strategy=clip", "--limit", "2",
                                          "--out", str(tmp_path / "o")])  # fmt: skip
    assert all_failed.exit_code == 1 and "every cell of the sweep failed" in all_failed.output
