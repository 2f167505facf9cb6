"""Liveness and the run lock (issue 21, item 4): a run whose process is dead is shown
`interrupted`, not `running`, and a second identical run stops naming the first instead of
computing everything again. Real processes, a real SIGKILL, a real HTTP server on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from api_servers import HANG, FakeApiServer
from store_probe import rows_committed
from test_eval import make_image_folder

from vlmclf.store import Heartbeat, LeaseLostError, RunBusyError, RunStore

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
NAMES = ["a", "b"]
ANSWERED_FIRST = 3


def _eval_command(server: FakeApiServer, root: Path, store: Path) -> list[str]:
    return [sys.executable, "-m", "vlmclf.cli", "eval", "--model", "openai:test-model",
            "--base-url", server.base_url, "--dataset", "imagefolder", "--data-root", str(root),
            "--method", "generate", "--store", str(store), "--no-progress", "--json",
            "--concurrency", "1", "--batch-size", "1", "--workers", "1"]  # fmt: skip


def _env(tmp_path: Path) -> dict[str, str]:
    # a 1 s heartbeat (a sixth of 6 s): the killed run has renewed its lease by the time it is
    # killed however fast this machine is, so its time up to the last heartbeat is above 0
    return {**os.environ, "OPENAI_API_KEY": "test-key", "VLMCLF_LEASE_STALE_S": "6",
            "VLMCLF_API_CACHE": str(tmp_path / "api-cache.sqlite")}  # fmt: skip


def _results(store: Path) -> list[dict]:
    command = [sys.executable, "-m", "vlmclf.cli", "results", "--store", str(store), "--format",
               "json"]  # fmt: skip
    listed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def _wait_for(condition, seconds: float = 90.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.05)


def test_second_identical_run_stops_naming_the_first_and_a_killed_run_reads_interrupted(
    tmp_path: Path,
) -> None:
    root = make_image_folder(tmp_path / "images", per_class=2)  # 8 images
    store = tmp_path / "runs.sqlite"
    hang_after = lambda index, prompt: HANG if index >= ANSWERED_FIRST else None  # noqa: E731
    with FakeApiServer("openai", plan=hang_after) as server:
        first = subprocess.Popen(_eval_command(server, root, store), env=_env(tmp_path), text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        try:
            _wait_for(lambda: rows_committed(store) == ANSWERED_FIRST and server.in_flight == 1)
            (live,) = _results(store)
            assert live["status"] == "running"

            requests_before = len(server.chat_requests)
            second = subprocess.run(_eval_command(server, root, store), env=_env(tmp_path),
                                    capture_output=True, text=True, timeout=120)  # fmt: skip
            assert second.returncode == 75, second.stderr
            (line,) = second.stderr.strip().splitlines()
            assert line.startswith("error: ") and f"pid {first.pid} on host" in line
            assert "being computed by another process" in line
            assert len(server.chat_requests) == requests_before  # it asked the server nothing
        finally:
            first.send_signal(signal.SIGKILL)
            first.communicate(timeout=60)
        assert first.returncode == -signal.SIGKILL

        (dead,) = _results(store)
        assert dead["status"] == "interrupted"  # not `running`: nobody holds it any more
        assert dead["seconds"] > 0  # the killed session's time up to its last heartbeat

        server.plan = None
        server.release.set()
        resumed = subprocess.run(_eval_command(server, root, store), env=_env(tmp_path),
                                 capture_output=True, text=True, timeout=300)  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr
        (done,) = _results(store)
        assert done["status"] == "done" and rows_committed(store) == 8


def _lease_columns(store: Path, run_id: str, **values: object) -> None:
    with sqlite3.connect(store) as db:
        for name, value in values.items():
            db.execute(f"UPDATE leases SET {name} = ? WHERE run_id = ?", (value, run_id))


def test_a_lease_held_on_another_host_is_respected_until_its_heartbeat_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLMCLF_LEASE_STALE_S", "30")
    path = tmp_path / "runs.sqlite"
    with RunStore(path) as holder:
        holder.start_run("r", "{}", NAMES, 2)
        # what another machine sharing the file would have written: its pid means nothing here
        _lease_columns(path, "r", host="other-node", pid=1, heartbeat_at=time.time() - 5)
        with RunStore(path) as other, pytest.raises(RunBusyError, match="host other-node"):
            other.start_run("r", "{}", NAMES, 2)
        assert holder.get_run("r").status == "running"
        _lease_columns(path, "r", heartbeat_at=time.time() - 31)  # no heartbeat for 31 s
        assert holder.get_run("r").status == "interrupted"
        with RunStore(path) as other:
            other.start_run("r", "{}", NAMES, 2)  # taken over
            assert other.lease("r").token == other.owner.token
            assert other.get_run("r").status == "running"
        assert not holder.renew_lease("r")  # the first holder learns it lost the run


def test_a_lost_lease_stops_the_heartbeat_and_is_raised_between_batches(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    with RunStore(path) as store:
        store.start_run("r", "{}", NAMES, 2)
        _lease_columns(path, "r", token="someone-else", host=socket.gethostname() + "-x")
        with Heartbeat(lambda: store.renew_lease("r"), interval_s=0.01) as beat:
            _wait_for(lambda: beat._lost is not None, 10)
            with pytest.raises(LeaseLostError):
                beat.check()
        store.finish_run("r", "failed", 1.0)  # another live holder: its status is left alone
        assert store.get_run("r").status == "running"


def test_a_finished_run_releases_its_lock_and_a_closed_store_is_not_alive(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    store = RunStore(path)
    store.start_run("r", "{}", NAMES, 2)
    assert store.get_run("r").lease.pid == os.getpid()
    store.close()  # a run that raised in this process without a last status write
    with RunStore(path) as reader:
        assert reader.get_run("r").status == "interrupted"
        reader.start_run("r", "{}", NAMES, 2)
        reader.finish_run("r", "done", 1.0)
        assert reader.get_run("r").status == "done" and reader.get_run("r").lease is None


def test_with_wait_the_second_run_waits_for_the_first_then_sends_nothing(
    tmp_path: Path,
) -> None:
    root = make_image_folder(tmp_path / "images", per_class=2)  # 8 images
    store = tmp_path / "runs.sqlite"
    env = {**_env(tmp_path), "VLMCLF_LEASE_STALE_S": "6"}  # a heartbeat (and poll) each second
    hang_after = lambda index, prompt: HANG if index >= ANSWERED_FIRST else None  # noqa: E731
    with FakeApiServer("openai", plan=hang_after) as server:
        first = subprocess.Popen(_eval_command(server, root, store), env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        second = None
        try:
            _wait_for(lambda: rows_committed(store) == ANSWERED_FIRST and server.in_flight == 1)
            waiting = [*_eval_command(server, root, store), "--wait"]
            second = subprocess.Popen(waiting, env=env, text=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)  # fmt: skip
            said = second.stderr.readline()  # blocks until it says that it waits
            assert "waiting (--wait)" in said and f"pid {first.pid}" in said, said
            time.sleep(1.0)
            assert second.poll() is None  # waiting, not computing: no request of its own
            assert len(server.chat_requests) == ANSWERED_FIRST + 1
            server.plan = None
            server.release.set()  # the first run goes on and finishes
            _, first_err = first.communicate(timeout=300)
            assert first.returncode == 0, first_err
            asked = len(server.chat_requests)
            out, err = second.communicate(timeout=300)
        finally:
            for process in (first, second):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.communicate()
    assert second.returncode == 0, err
    assert len(server.chat_requests) == asked  # everything was done by the first
    assert json.loads(out.strip().splitlines()[-1])["n"] == 8
