"""`eval --log tensorboard`: the run's numbers in TensorBoard event files, read back with
TensorBoard's own reader; an unknown tracker is refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_data import write_noisy_colour_folder
from typer.testing import CliRunner

from vlmclf.cli import app


def eval_args(folder: Path, store: Path, *extra: str) -> list[str]:
    return ["eval", "--model", "random:clip", "--method", "clip", "--dataset", "imagefolder",
            "--data-root", str(folder), "--store", str(store), "--no-progress", "--json",
            *extra]  # fmt: skip


def test_log_tensorboard_writes_event_files_tensorboard_reads_back(tmp_path: Path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra (make setup installs it)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = write_noisy_colour_folder(tmp_path / "images", per_class=2, seed=5, noise=5.0)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, eval_args(folder, tmp_path / "s.sqlite", "--output-path",
                                               str(out), "--log", "tensorboard"))  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    events = EventAccumulator(str(out / "tensorboard" / summary["run_id"]))
    events.Reload()
    scalars = {tag: events.Scalars(tag)[0].value for tag in events.Tags()["scalars"]}
    assert scalars["eval/accuracy"] == pytest.approx(summary["accuracy"])
    assert scalars["eval/top5"] == pytest.approx(summary["top5"])
    assert scalars["eval/ci95_low"] == pytest.approx(summary["ci95"][0])
    assert scalars["eval/n"] == summary["n"] == 6
    texts = events.Tensors("run/spec/text_summary")
    assert b"random:clip" in texts[0].tensor_proto.string_val[0]


def test_unknown_tracker_is_refused_before_any_work(tmp_path: Path):
    store = tmp_path / "s.sqlite"
    result = CliRunner().invoke(app, eval_args(tmp_path, store, "--log", "mlflow"))
    assert result.exit_code == 2
    assert "error: --log must be one of tensorboard, got 'mlflow'" in result.output
    assert not store.exists()
