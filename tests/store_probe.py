"""Reading a store from outside the process that writes it (kill-and-resume tests)."""

from __future__ import annotations

import contextlib
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
