"""Killing the torchrun launcher stops its ranks (issue 21, item 2): real torchrun, gloo, two
ranks, a real SIGKILL of the launcher alone. The ranks notice (parent-death signal on Linux,
a watch on the parent elsewhere), stop cleanly and leave their committed rows, and the run is
not shown as running."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from store_probe import _descendants, kill_process_tree, rows_committed
from test_distributed import (
    BATCH,
    ENTRY,
    N_EXAMPLES,
    TIMEOUT_S,
    child_env,
    eval_args,
    torchrun,
)
from test_distributed import data_root as data_root  # noqa: F401 - a fixture

from vlmclf.store import RunStore

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_killing_the_launcher_stops_every_rank_and_keeps_committed_rows(
    data_root: Path,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    store = tmp_path / "runs.sqlite"
    job = subprocess.Popen(
        [*torchrun(2), str(ENTRY), *eval_args(data_root, store)],
        env=child_env(VLMCLF_TEST_SLEEP_S="1.0"), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    ranks: list[int] = []
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while rows_committed(store) < BATCH and time.monotonic() < deadline:
            assert job.poll() is None, "the job ended before the kill"
            time.sleep(0.05)
        ranks = [p for p in _descendants(job.pid) if _alive(p)]
        assert len(ranks) >= 2, ranks  # the two ranks (and nothing else torchrun started)
        with contextlib.closing(sqlite3.connect(store, timeout=5)) as db:
            holders = db.execute("SELECT pid FROM leases").fetchall()
        assert len(holders) == 1 and holders[0][0] in ranks  # one logical owner: the main rank
        os.kill(job.pid, signal.SIGKILL)  # the launcher alone
        job.wait()
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in ranks) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in ranks if _alive(p)], "ranks went on after their launcher died"
    finally:
        for pid in ranks:  # never leave a rank behind, whatever happened
            kill_process_tree(pid)
    stopped_at = rows_committed(store)
    time.sleep(2.0)
    assert rows_committed(store) == stopped_at  # nobody writes any more
    assert 0 < stopped_at < N_EXAMPLES, stopped_at
    with RunStore(store, read_only=True) as runs:
        (record,) = runs.list_runs()
        assert record.status == "interrupted"


def test_the_parent_watch_signals_this_process_when_its_parent_changes(tmp_path: Path) -> None:
    """The fallback where no parent-death signal exists: a child whose parent exits gets
    SIGTERM from its watch thread."""
    marker = tmp_path / "got-sigterm"
    child = (
        "import os, signal, sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).parents[1] / 'src')!r})\n"
        "from vlmclf.run.launcher_watch import _watch_parent\n"
        f"signal.signal(signal.SIGTERM, lambda *a: (open({str(marker)!r}, 'w').close(),"
        " os._exit(0)))\n"
        "_watch_parent(os.getppid(), signal.SIGTERM)\n"
        "print('watching', flush=True)\n"
        "time.sleep(30)\n"
    )
    parent = (
        "import subprocess, sys\n"
        f"p = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=subprocess.PIPE,"
        " start_new_session=True)\n"
        "p.stdout.readline()\n"
        "print(p.pid, flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    grandchild = int(done.stdout.split()[0])
    deadline = time.monotonic() + 20
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(grandchild, signal.SIGKILL)
    assert marker.exists(), "the orphan did not notice its parent was gone"
