"""One meaning per flag name: options renamed to the spelling every other command uses keep
their old spelling for one release, with a deprecation warning; both at once is an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_data import write_noisy_colour_folder
from typer.testing import CliRunner

from vlmclf.cli import app


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    return write_noisy_colour_folder(tmp_path / "images", per_class=1, seed=4, noise=5.0)


def manifest_ids(path: Path) -> list[str]:
    return [json.loads(line)["image"] for line in path.read_text().splitlines()]


def test_data_manifest_takes_dataset_and_data_root(folder: Path, tmp_path: Path):
    out = tmp_path / "new.jsonl"
    result = CliRunner().invoke(app, ["data", "manifest", "--dataset", "imagefolder",
                                      "--data-root", str(folder), "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "deprecated" not in result.output and len(manifest_ids(out)) == 3


def test_data_manifest_old_spellings_still_work_with_a_warning(folder: Path, tmp_path: Path):
    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    result = CliRunner().invoke(app, ["data", "manifest", "--layout", "imagefolder", "--root",
                                      str(folder), "--out", str(old)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning: --layout is deprecated and goes in the next release; use --dataset" in (
        result.stderr
    )
    assert "warning: --root is deprecated and goes in the next release; use --data-root" in (
        result.stderr
    )
    CliRunner().invoke(app, ["data", "manifest", "--dataset", "imagefolder", "--data-root",
                             str(folder), "--out", str(new)])  # fmt: skip
    assert old.read_text() == new.read_text()


def test_old_and_new_spelling_together_is_an_error(folder: Path, tmp_path: Path):
    result = CliRunner().invoke(app, ["data", "manifest", "--layout", "imagefolder", "--dataset",
                                      "imagefolder", "--data-root", str(folder), "--out",
                                      str(tmp_path / "m.jsonl")])  # fmt: skip
    assert result.exit_code == 2
    assert "error: --layout is the old name of --dataset: give --dataset only" in result.output
    missing = CliRunner().invoke(app, ["data", "manifest", "--data-root", str(folder), "--out",
                                       str(tmp_path / "m.jsonl")])  # fmt: skip
    assert missing.exit_code == 2 and "error: Missing option '--dataset'." in missing.output


def test_frequency_corpus_format_and_its_old_name(tmp_path: Path):
    corpus = tmp_path / "corpus.data"
    corpus.write_text("a tench\nthe goldfish\ngoldfish\n")
    base = ["frequency", "--corpus", str(corpus), "--classes", "imagenet", "--store",
            str(tmp_path / "s.sqlite")]  # fmt: skip
    new = CliRunner().invoke(app, [*base, "--corpus-format", "text", "--out", str(tmp_path / "a")])
    old = CliRunner().invoke(app, [*base, "--format", "text", "--out", str(tmp_path / "b")])
    assert new.exit_code == 0 and old.exit_code == 0, new.output + old.output
    assert "deprecated" not in new.output
    assert "warning: --format is deprecated and goes in the next release; use --corpus-format" in (
        old.stderr
    )


def test_finetune_limit_and_eval_limit_together_are_refused_before_any_work(tmp_path: Path):
    result = CliRunner().invoke(app, ["finetune", "--model", "random:llava", "--dataset",
                                      "fashion_mnist", "--limit", "4", "--eval-limit", "4",
                                      "--store", str(tmp_path / "s.sqlite")])  # fmt: skip
    assert result.exit_code == 2
    assert "error: --eval-limit is the old name of --limit: give --limit only" in result.output
    assert not (tmp_path / "s.sqlite").exists()


def test_renamed_options_are_hidden_from_help():
    for path, old in ((["data", "manifest"], "--layout"), (["frequency"], "--format"),
                      (["finetune"], "--eval-limit")):  # fmt: skip
        text = CliRunner().invoke(app, [*path, "--help"], terminal_width=200).output
        assert f" {old} " not in text


def test_sweep_takes_a_repeated_model_like_dataset_and_records_threads(folder: Path, tmp_path):
    store = tmp_path / "s.sqlite"
    base = ["sweep", "--dataset", "imagefolder", "--data-root", str(folder), "--limit", "2",
            "--max-new-tokens", "2", "--store", str(store), "--out", str(tmp_path / "o"),
            "--no-progress", "--json"]  # fmt: skip
    new = CliRunner().invoke(app, [*base, "--model", "random:llava", "--threads", "1"])
    assert new.exit_code == 0, new.output
    old = CliRunner().invoke(app, [*base, "--models", "random:llava"])
    assert old.exit_code == 0, old.output
    assert "warning: --models is deprecated and goes in the next release; use --model" in (
        old.stderr
    )
    rows = json.loads(CliRunner().invoke(app, ["results", "--store", str(store), "--format",
                                               "json"]).stdout)  # fmt: skip
    assert len(rows) == 1 and rows[0]["threads"] == 1  # the same run, reused
    missing = CliRunner().invoke(app, base)
    assert missing.exit_code == 2 and "error: Missing option '--model'." in missing.output
