"""Configuration errors cost seconds and store nothing: an unknown model, a missing API key, an
API server that does not answer (probed once before the run, over real loopback sockets);
empty and refused API answers are reported as answers; API runs show no dtype."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from api_servers import EMPTY, FakeApiServer, fast_settings, make_images, status
from fixtures_data import write_noisy_colour_folder
from typer.testing import CliRunner

from vlmclf.cli import app
from vlmclf.models.api import load_api_model
from vlmclf.models.api.errors import ApiUnreachable
from vlmclf.models.api.loader import check_api_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_noisy_colour_folder(tmp_path_factory.mktemp("cfg"), per_class=1, seed=3,
                                     noise=5.0)  # fmt: skip


def eval_args(folder: Path, store: Path, model: str, *extra: str) -> list[str]:
    return ["eval", "--model", model, "--dataset", "imagefolder", "--data-root", str(folder),
            "--method", "generate", "--store", str(store), "--no-progress", *extra]  # fmt: skip


def refused_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


def test_unknown_model_prefix_is_one_line_exit_2_nothing_stored(folder: Path, tmp_path: Path):
    store = tmp_path / "s.sqlite"
    result = CliRunner().invoke(app, eval_args(folder, store, "hff:some/model"))
    assert result.exit_code == 2
    assert "unknown model prefix 'hff'" in one_error_line(result.output)
    assert not store.exists()


def test_missing_key_is_a_config_error_not_a_failed_run(folder, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    store = tmp_path / "s.sqlite"
    result = CliRunner().invoke(app, eval_args(folder, store, "openai:gpt-4o"))
    assert result.exit_code == 2
    line = one_error_line(result.output)
    assert "OPENAI_API_KEY" in line and "answers received so far" not in line
    assert not store.exists()  # no `failed` run row: nothing ran


def test_unreachable_server_is_found_by_one_probe_in_seconds(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMCLF_API_CACHE", str(tmp_path / "cache.sqlite"))
    store = tmp_path / "s.sqlite"
    url = f"http://127.0.0.1:{refused_port()}/v1"
    started = time.monotonic()
    result = CliRunner().invoke(app, eval_args(folder, store, "openai:m", "--base-url", url))
    assert result.exit_code == 2 and time.monotonic() - started < 20
    line = one_error_line(result.output)
    assert f"the server at {url} does not answer (connection failed" in line
    assert not store.exists()


def test_a_server_that_never_answers_times_out_after_the_probe_timeout():
    with socket.socket() as listener:  # accepts connections (backlog) and never replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        started = time.monotonic()
        with pytest.raises(ApiUnreachable, match=r"does not answer \(timed out after 0.5 s\)"):
            check_api_model("openai:m", url, probe_timeout_s=0.5)
        assert time.monotonic() - started < 5


def test_probe_is_one_request_without_the_key_and_the_run_goes_on(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-probe-secret")
    monkeypatch.setenv("VLMCLF_API_CACHE", str(tmp_path / "cache.sqlite"))
    with FakeApiServer("openai", key="sk-probe-secret") as server:
        args = eval_args(folder, tmp_path / "s.sqlite", "openai:test-model", "--base-url",
                         server.base_url, "--json")  # fmt: skip
        result = CliRunner().invoke(app, args)
        probes = [r for r in server.requests if r.method == "GET"]
    assert result.exit_code == 0, result.output
    assert len(probes) == 1 and "sk-probe-secret" not in json.dumps(probes[0].headers)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["n"] == 3 and "dtype" not in summary["protocol"]  # an API run has no dtype


def test_local_runs_still_show_their_dtype(folder: Path, tmp_path: Path):
    args = eval_args(folder, tmp_path / "s.sqlite", "random:llava", "--max-new-tokens", "2",
                     "--json")  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["protocol"]["dtype"] == "float32"


def test_empty_and_refused_answers_are_logged_as_answers_not_failures(
    tmp_path, caplog, monkeypatch
):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    refusal = {"choices": [{"message": {"content": None, "refusal": "I can't help"},
                            "finish_reason": "stop"}]}  # fmt: skip
    blocked = status(200, body=json.dumps(refusal).encode())
    with FakeApiServer("openai", always={"e": EMPTY, "b": blocked}) as server, \
            caplog.at_level(logging.WARNING, "vlmclf.api"):  # fmt: skip
        model = load_api_model("openai:test-model",
                               **fast_settings(server, tmp_path / "c.sqlite"))  # fmt: skip
        model.generate(make_images(3), ["e", "b", "ok"], 5)
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "item failed" in m], messages
    assert any("empty answer, counted as wrong" in m for m in messages)
    assert any("refused answer, counted as wrong" in m for m in messages)
    assert model.usage()["failures"] == 0


def test_probe_does_not_wait_for_a_slow_answer_body(tmp_path):
    """Any HTTP status counts as an answer: a 404 for the bare base URL is a live server."""
    with FakeApiServer("openai") as server:
        check_api_model("openai:test-model", server.base_url, probe_timeout_s=2)
        assert [r.method for r in server.requests] == ["GET"]




def test_threads_caps_torch_and_is_recorded_beside_the_run(folder: Path, tmp_path: Path):
    """In a subprocess: the cap is process-wide, and the test process keeps its own."""
    store = tmp_path / "s.sqlite"
    code = (
        "import sys, torch; from vlmclf.cli import app; before = torch.get_num_threads(); "
        "sys.argv = ['vlmclf', *sys.argv[1:]]; "
        "import atexit; atexit.register(lambda: print('threads', before, torch.get_num_threads(),"
        " file=sys.stderr)); app()"
    )
    args = eval_args(folder, store, "random:clip", "--threads", "1")
    args[args.index("generate")] = "clip"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # torch would pick 2
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=300, check=False, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "threads 2 1"  # torch computed with 1
    rows = json.loads(CliRunner().invoke(app, ["results", "--store", str(store), "--format",
                                               "json"]).stdout)  # fmt: skip
    assert [row["threads"] for row in rows] == [1]
    same = CliRunner().invoke(app, eval_args(folder, store, "random:clip", "--threads", "0"))
    assert same.exit_code == 2 and "'--threads': must be >= 1, got 0" in same.output
