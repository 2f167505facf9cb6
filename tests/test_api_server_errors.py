"""A flaky server's error is the server's, never the data's (issue 21, item 6): an item that met
the same 500 twice in a row (or any other 5xx) is stored as a transient failure, the headline is
provisional, and the next run asks about it again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from api_servers import FakeApiServer, status
from test_eval import make_image_folder
from typer.testing import CliRunner

from vlmclf.cli import app
from vlmclf.store import RunStore

BOOM = b'{"error": {"message": "internal error", "type": "server_error"}}'


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("VLMCLF_API_CACHE", str(tmp_path / "cache.sqlite"))


def _eval(server: FakeApiServer, root: Path, store: Path) -> dict:
    args = ["eval", "--model", "openai:test-model", "--base-url", server.base_url, "--dataset",
            "imagefolder", "--data-root", str(root), "--method", "generate", "--store",
            str(store), "--no-progress", "--json", "--concurrency", "1"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "faults", [[status(500, body=BOOM), status(500, body=BOOM)], [status(501, body=BOOM)]],
    ids=["same-500-twice", "501"],
)
def test_a_server_error_is_a_transient_failure_that_the_next_run_retries(
    tmp_path: Path, faults: list
) -> None:
    root = make_image_folder(tmp_path / "images", per_class=1)  # 4 images
    store = tmp_path / "runs.sqlite"
    with FakeApiServer("openai", by_index=dict(enumerate(faults))) as server:
        first = _eval(server, root, store)
        with RunStore(store, read_only=True) as runs:
            (record,) = runs.list_runs()
            outcomes = [p.outcome for p in runs.predictions(record.run_id)]
        assert sorted(outcomes) == ["answer"] * 3 + ["transient_failure"], outcomes
        assert record.status == "incomplete" and record.n_transient == 1
        asked = len(server.chat_requests)
        second = _eval(server, root, store)
        assert len(server.chat_requests) == asked + 1  # the failed item, asked again
    assert first["run_id"] == second["run_id"]
    with RunStore(store, read_only=True) as runs:
        assert runs.get_run(record.run_id).status == "done"
        assert [p.outcome for p in runs.predictions(record.run_id)] == ["answer"] * 4
