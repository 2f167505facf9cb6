"""Crash safety: a run killed with SIGKILL mid-batch loses no answer and re-sends none."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from api_servers import HANG, FakeApiServer

N_ITEMS, ANSWERED_FIRST, CONCURRENCY = 8, 3, 2

CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from api_servers import make_images
from vlmclf.models.api import load_api_model
model = load_api_model("openai:test-model", base_url=sys.argv[2], cache_path=sys.argv[3],
                       concurrency=int(sys.argv[4]), timeout_s=60, backoff_base_s=0.005)
n = int(sys.argv[5])
answers = model.generate(make_images(n), [f"q{i}" for i in range(n)], 5)
print(json.dumps([str(a) for a in answers]))
"""

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


def _start_child(server: FakeApiServer, cache: Path) -> subprocess.Popen:
    tests_dir = str(Path(__file__).parent)
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, tests_dir, server.base_url, str(cache), str(CONCURRENCY),
         str(N_ITEMS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OPENAI_API_KEY": "test-key"},
    )


def _stored_rows(cache: Path) -> int:
    try:
        with sqlite3.connect(cache, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    except sqlite3.OperationalError:
        return 0  # the child has not created the table yet


def _wait_for(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the child process")
        time.sleep(0.05)


def test_sigkill_mid_batch_then_rerun_sends_only_the_unanswered(tmp_path):
    cache = tmp_path / "responses.sqlite"
    hang_after_k = lambda index, prompt: HANG if index >= ANSWERED_FIRST else None  # noqa: E731
    with FakeApiServer("openai", plan=hang_after_k) as server:
        child = _start_child(server, cache)
        try:
            _wait_for(lambda: _stored_rows(cache) == ANSWERED_FIRST
                      and server.in_flight == CONCURRENCY)
        finally:
            child.send_signal(signal.SIGKILL)
            child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL
        answered = {r.prompt for r in server.chat_requests if r.index < ANSWERED_FIRST}
        assert len(answered) == ANSWERED_FIRST and _stored_rows(cache) == ANSWERED_FIRST

        server.plan = None  # the server recovers; the same URL, so the same cache keys
        server.release.set()  # let the hung handlers go (their client is dead)
        before = len(server.chat_requests)
        rerun = _start_child(server, cache)
        stdout, stderr = rerun.communicate(timeout=60)
        assert rerun.returncode == 0, stderr
        resent = [r.prompt for r in server.chat_requests[before:]]
    everything = {f"q{i}" for i in range(N_ITEMS)}
    assert sorted(resent) == sorted(everything - answered)  # each unanswered item exactly once
    assert json.loads(stdout) == [f"answer to q{i}" for i in range(N_ITEMS)]
    assert _stored_rows(cache) == N_ITEMS
