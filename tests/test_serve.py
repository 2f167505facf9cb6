"""`vlmclf serve` answers the real OpenAI client over loopback HTTP with a real (tiny) model."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_eval import make_image_folder
from typer.testing import CliRunner

from vlmclf.cli import app
from vlmclf.models import load_model
from vlmclf.serve import ChatModelServer


@pytest.fixture(scope="module")
def server():
    served = ChatModelServer(load_model("random:llava"), "tiny-llava", port=0)
    served.start_in_thread()
    yield served
    served.shutdown()


def _post(url: str, body: object) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_eval_through_the_openai_client_matches_the_local_model(
    server, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("VLMCLF_API_CACHE", str(tmp_path / "cache.sqlite"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    root = make_image_folder(tmp_path / "images", per_class=2)
    common = [
        "--dataset",
        "imagefolder",
        "--data-root",
        str(root),
        "--method",
        "generate",
        "--max-new-tokens",
        "5",
        "--store",
        str(tmp_path / "s.sqlite"),
        "--json",
        "--no-progress",
    ]
    served = CliRunner().invoke(
        app,
        [
            "eval",
            "--model",
            "openai:tiny-llava",
            "--base-url",
            server.base_url,
            "--concurrency",
            "2",
            *common,
        ],
    )
    assert served.exit_code == 0, served.output
    summary = json.loads(served.stdout.strip().splitlines()[-1])
    assert summary["n"] == 8 and summary["n_failed"] == 0
    assert summary["usage"]["answered"] == 8 and summary["usage"]["input_tokens"] > 0

    local = CliRunner().invoke(app, ["eval", "--model", "random:llava", *common])
    local_summary = json.loads(local.stdout.strip().splitlines()[-1])
    from vlmclf.store import RunStore

    with RunStore(tmp_path / "s.sqlite") as runs:
        texts_served = {p.example_id: p.text for p in runs.predictions(summary["run_id"])}
        texts_local = {p.example_id: p.text for p in runs.predictions(local_summary["run_id"])}
    # PNG over the wire is lossless, so the served model sees the same pixels
    assert texts_served == texts_local


def test_errors_follow_the_openai_shape(server):
    status, body = _post(f"{server.base_url}/chat/completions", {"model": "other", "messages": []})
    assert status == 404 and body["error"]["code"] == "model_not_found"
    status, body = _post(
        f"{server.base_url}/chat/completions",
        {"model": "tiny-llava", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert status == 400 and "exactly one image" in body["error"]["message"]
    with urllib.request.urlopen(f"{server.base_url}/models", timeout=10) as response:
        assert json.loads(response.read())["data"][0]["id"] == "tiny-llava"


def test_a_missing_api_key_is_a_clear_error_not_a_traceback(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    root = make_image_folder(tmp_path / "images", per_class=1)
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--model",
            "openai:gpt-4o",
            "--method",
            "generate",
            "--dataset",
            "imagefolder",
            "--data-root",
            str(root),
            "--store",
            str(tmp_path / "s.sqlite"),
            "--no-progress",
        ],
    )
    assert result.exit_code == 2  # a config error, found before any work
    assert "set the OPENAI_API_KEY environment variable" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "s.sqlite").exists()  # nothing stored
