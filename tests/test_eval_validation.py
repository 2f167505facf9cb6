"""Arguments are checked before anything is stored or loaded, and a damaged store's schema
version is one line (issue 21, item 5)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from test_eval import make_image_folder
from typer.testing import CliRunner

from vlmclf.cli import app
from vlmclf.store import RunStore


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("images"), per_class=1)


def _eval(folder: Path, store: Path, *args: str):
    common = ["--dataset", "imagefolder", "--data-root", str(folder), "--store", str(store)]
    return CliRunner().invoke(app, ["eval", *common, "--no-progress", *args])


def _one_error_line(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--model", "random:llava", "--method", "generate", "--k", "3"], ["--k applies to"]),
        (["--model", "random:llava", "--method", "likelihood", "--k", "3"], ["--setting closed"]),
        (["--model", "foo:bar", "--method", "generate"], ["unknown model prefix 'foo'"]),
        (["--model", "llava", "--method", "generate"], ["must look like 'prefix:name'"]),
        (["--model", "openai:", "--method", "generate"], ["names no model"]),
        (["--model", "random:llava", "--method", "generate", "--prompt", ""],
         ["--prompt is empty"]),
        (["--model", "random:llava", "--method", "generate", "--prompt", "  "], ["--prompt"]),
        (["--model", "random:llava", "--method", "generate", "--prompt-template", "{"],
         ["unmatched brace"]),
        (["--model", "random:llava", "--method", "generate", "--prompt-template", "USER: {image}"],
         ["no {question}"]),
        (["--model", "random:llava", "--method", "generate", "--prompt-template",
          "{image} {qestion}"], ["unknown placeholder(s) {qestion}"]),
    ],
    ids=["k-open-generate", "k-open-likelihood", "unknown-prefix", "no-prefix", "api-no-name",
         "empty-prompt", "blank-prompt", "brace", "no-question", "typo-placeholder"],
)
def test_bad_arguments_fail_in_one_line_and_store_nothing(
    folder: Path, tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    store = tmp_path / "runs.sqlite"
    with RunStore(store) as runs:  # an existing store: nothing may be added to it
        assert runs.list_runs() == []
    _one_error_line(_eval(folder, store, *args), *fragments)
    with RunStore(store, read_only=True) as runs:
        assert runs.list_runs() == []


def test_good_arguments_still_run(folder: Path, tmp_path: Path) -> None:
    ok = _eval(folder, tmp_path / "runs.sqlite", "--model", "random:llava", "--method",
               "generate", "--setting", "closed", "--k", "2", "--max-new-tokens", "2",
               "--prompt-template", "USER: {image}\n{question}\nASSISTANT:")  # fmt: skip
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize(("version", "fragment"), [(-1, "version -1 is negative"),
                                                   (0, "schema version 0 but it holds")])
def test_a_store_with_a_damaged_schema_version_is_one_line_everywhere(
    folder: Path, tmp_path: Path, version: int, fragment: str
) -> None:
    store = tmp_path / "runs.sqlite"
    with RunStore(store) as runs:
        runs.start_run("r", "{}", ["a", "b"], 2)
        runs.finish_run("r", "done", 1.0)
    with sqlite3.connect(store) as db:
        db.execute(f"PRAGMA user_version = {version}")
    evaluated = _eval(folder, store, "--model", "random:clip", "--method", "clip")
    _one_error_line(evaluated, str(store), fragment)
    _one_error_line(CliRunner().invoke(app, ["results", "--store", str(store)]), fragment)
