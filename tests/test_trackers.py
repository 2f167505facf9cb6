"""`eval --log tensorboard|wandb`: the run's numbers in TensorBoard event files and in an offline
W&B run, each read back with the tracker's own reader; an unknown tracker, or one whose package
is missing, is refused before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_data import write_noisy_colour_folder
from packaging.version import Version
from typer.testing import CliRunner

from vlmclf.cli import app
from vlmclf.metrics import per_class_accuracy
from vlmclf.run.trackers import SCALARS
from vlmclf.store import RunStore

SRC = Path(__file__).resolve().parents[1] / "src"
API_KEY = "vlmclf-test-key-0123456789abcdef0123456789"
"""A fake W&B key in the environment: it must show up in nothing we print or write."""


def eval_args(folder: Path, store: Path, *extra: str) -> list[str]:
    return ["eval", "--model", "random:clip", "--method", "clip", "--dataset", "imagefolder",
            "--data-root", str(folder), "--store", str(store), "--no-progress", "--json",
            *extra]  # fmt: skip


def run_eval(folder: Path, store: Path, *extra: str) -> tuple[dict, str]:
    """The --json summary and everything printed."""
    result = CliRunner().invoke(app, eval_args(folder, store, *extra))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1]), result.output


def stored_per_class(store: Path, run_id: str) -> dict[str, float]:
    """Each class's accuracy by the headline rule, from the stored predictions (row by row)."""
    with RunStore(store, read_only=True) as runs:
        names = runs.get_run(run_id).class_names
        return per_class_accuracy(runs.predictions(run_id), names, rule="contain")


def test_log_tensorboard_writes_event_files_tensorboard_reads_back(tmp_path: Path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra (make setup installs it)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = write_noisy_colour_folder(tmp_path / "images", per_class=2, seed=5, noise=5.0)
    out, store = tmp_path / "out", tmp_path / "s.sqlite"
    summary, _ = run_eval(folder, store, "--output-path", str(out), "--log", "tensorboard")
    events = EventAccumulator(str(out / "tensorboard" / summary["run_id"]))
    events.Reload()
    scalars = {tag: events.Scalars(tag)[0].value for tag in events.Tags()["scalars"]}
    assert scalars["eval/accuracy"] == pytest.approx(summary["accuracy"])
    assert scalars["eval/top5"] == pytest.approx(summary["top5"])
    assert scalars["eval/ci95_low"] == pytest.approx(summary["ci95"][0])
    assert scalars["eval/n"] == summary["n"] == 6
    per_class = {tag.removeprefix("per_class/"): value for tag, value in scalars.items()
                 if tag.startswith("per_class/")}  # fmt: skip
    assert per_class == pytest.approx(stored_per_class(store, summary["run_id"]))
    assert sorted(per_class) == ["blue", "green", "red"]
    texts = events.Tensors("run/spec/text_summary")
    assert b"random:clip" in texts[0].tensor_proto.string_val[0]


def read_offline_run(run_dir: Path) -> dict:
    """W&B's own reader of a run's transaction log: `wandb leet inspect --summary --json`."""
    command = [sys.executable, "-m", "wandb", "leet", "inspect", "--summary", "--json",
               str(run_dir)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """W&B offline whatever the shell or ~/.config/wandb says (set before wandb is imported),
    no crash reports to W&B, every folder it writes in tmp_path, a project and a fake key set;
    W&B's background service ended after the test."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb = pytest.importorskip("wandb", reason="the wandb extra (make setup installs it)")
    if Version(wandb.__version__) < Version("0.31"):
        pytest.skip(f"reading an offline run back needs wandb 0.31's `wandb leet inspect "
                    f"--summary`; wandb {wandb.__version__} is installed")  # fmt: skip
    home = tmp_path / "wandb-home"
    for name in ("CONFIG", "CACHE", "DATA", "ARTIFACT"):
        monkeypatch.setenv(f"WANDB_{name}_DIR", str(home / name.lower()))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_PROJECT", "vlmclf-tests")
    monkeypatch.setenv("WANDB_API_KEY", API_KEY)
    yield tmp_path / "wandb-dir"
    wandb.teardown()


def test_log_wandb_offline_run_holds_the_summary_read_back_with_wandb(
    tmp_path: Path, wandb_offline: Path, monkeypatch: pytest.MonkeyPatch
):
    folder = write_noisy_colour_folder(tmp_path / "images", per_class=2, seed=5, noise=5.0)
    store = tmp_path / "s.sqlite"
    summary, printed = run_eval(folder, store, "--log", "wandb")
    (run_dir,) = (wandb_offline / "wandb").glob("offline-run-*")  # W&B's own WANDB_DIR wins
    logged = read_offline_run(run_dir)
    assert logged["state"] == "finished" and logged["exit_code"] == 0
    assert logged["project"] == "vlmclf-tests" and logged["name"] == summary["run_id"]
    assert logged["config"] == {"run_id": summary["run_id"], "spec": summary["spec"],
                                "protocol": summary["protocol"]}  # fmt: skip
    numbers = logged["summary"]
    for key in SCALARS:
        assert numbers[f"eval/{key}"] == summary[key], key
    assert [numbers["eval/ci95_low"], numbers["eval/ci95_high"]] == summary["ci95"]
    table = json.loads((run_dir / "files" / numbers["per_class"]["path"]).read_text())
    assert table["columns"] == ["class", "accuracy"]
    assert dict(table["data"]) == stored_per_class(store, summary["run_id"])

    # without WANDB_DIR the run's files go under --output-path, beside results_<run_id>.json
    monkeypatch.delenv("WANDB_DIR")
    out = tmp_path / "out"
    again, printed_again = run_eval(folder, store, "--output-path", str(out), "--log", "wandb")
    assert again == summary  # the stored run, re-read
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    assert read_offline_run(run_dir)["summary"]["eval/accuracy"] == summary["accuracy"]

    assert API_KEY not in printed + printed_again
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or API_KEY.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb"])
def test_a_tracker_not_installed_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracker: str
):
    monkeypatch.setitem(sys.modules, tracker, None)  # what importing finds when it is missing
    store = tmp_path / "s.sqlite"
    result = CliRunner().invoke(app, eval_args(tmp_path, store, "--log", tracker))
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: --log {tracker} needs the {tracker} package: "
                                     f"pip install 'vlmclf[{tracker}]'")  # fmt: skip
    assert not store.exists()


def test_unknown_tracker_is_refused_before_any_work(tmp_path: Path):
    store = tmp_path / "s.sqlite"
    result = CliRunner().invoke(app, eval_args(tmp_path, store, "--log", "mlflow"))
    assert result.exit_code == 2
    assert "error: --log must be one of tensorboard, wandb, got 'mlflow'" in result.output
    assert not store.exists()


@pytest.mark.slow
def test_wandb_offline_mode_leaves_stdout_to_the_json(tmp_path: Path):
    """transformers prints a notice on stdout when its integrations load under
    WANDB_MODE=offline (sentence-transformers loads them: organism models, --match embed)."""
    pytest.importorskip("sentence_transformers", reason="the organism extra")
    code = "from vlmclf.models.compat import sentence_transformer_class as c; c()"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300, check=True)  # fmt: skip
    assert done.stdout == ""
    assert "WANDB offline" in done.stderr  # the notice still reaches the terminal
