"""The response cache: every answer is written to SQLite the moment it arrives.

It is what makes an interrupted run cheap: a re-run finds every answered request here and sends
only the rest. Keys hash everything that decides an answer (provider, model, base URL without
credentials, the exact image bytes sent, the prompt, the generation parameters) and nothing else;
values are parsed answers, never request headers, so no key can end up in the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def default_cache_path() -> Path:
    """``$VLMCLF_API_CACHE``, else ~/.cache/vlmclf/api_responses.sqlite."""
    configured = os.environ.get("VLMCLF_API_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "vlmclf" / "api_responses.sqlite"


def cache_key(provider: str, model: str, base_url: str, image_sha256: str, prompt: str,
              params: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of what decides an answer."""
    identity = {
        "provider": provider, "model": model, "base_url": base_url,
        "image": image_sha256, "prompt": prompt, "params": params,
    }
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseCache:
    """A thread-safe SQLite key-value store in WAL mode, committed after every write.

    Several processes may share one file (WAL plus a busy timeout). ``":memory:"`` keeps nothing
    across processes and is meant for experiments that must not touch the disk.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            self._db.commit()
        except sqlite3.DatabaseError as err:
            self._db.close()
            raise ValueError(f"API response cache {self.path} is not usable: {err}") from err

    def get_many(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The stored values of those keys that are present."""
        found: dict[str, dict[str, Any]] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            for start in range(0, len(unique), 500):
                chunk = unique[start:start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key, value FROM responses WHERE key IN ({marks})", chunk
                ).fetchall()
                found.update((key, json.loads(value)) for key, value in rows)
        return found

    def put(self, key: str, provider: str, model: str, value: dict[str, Any]) -> None:
        """Store one answer durably (committed before returning)."""
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (key, provider, model, value, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (key, provider, model, text, time.time()),
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
