"""Kill-and-resume tests: reading a store from outside the writer, killing a whole job."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
from pathlib import Path


def rows_committed(store: Path) -> int:
    """Rows in the predictions table now; 0 while the file or the table does not exist yet."""
    if not store.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(store, timeout=5)) as conn:
            return conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
    except sqlite3.Error:
        return 0


def kill_process_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it. torchrun starts its ranks in sessions of
    their own, so killing the launcher's process group would leave the ranks running (a main
    rank would go on writing the store while the test relaunches the job)."""
    tree = [pid, *_descendants(pid)]
    for member in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found
