"""Who is computing a run: one lease row per running run (owner pid, host, heartbeat).

Why: a run killed with SIGKILL (or one whose last status write failed on a full disk) keeps the
status ``running`` it was given at its start, exactly like a live one; and two identical runs
started at once would both compute everything (twice the time, twice the API spend). The lease
tells them apart: ``start_run`` takes it in the same write transaction that marks the run
running and a thread renews its ``heartbeat_at`` every ``HEARTBEAT_S`` seconds; a lease counts
only while its run's status is ``running`` (``finish_run`` changes the status and leaves the row,
so that a full disk that takes one page more cannot stop the last status write). A ``running``
run whose lease is not alive is shown as ``interrupted``, and a second process that finds a live
lease on a running run it is about to start stops with ``RunBusyError`` naming the holder.

Alive means: the heartbeat is younger than ``STALE_AFTER_S`` and, when the holder is on this
host, its pid still exists (and is not a zombie), so a SIGKILLed run on this machine is seen as
dead at once and one on another machine after ``STALE_AFTER_S``. Across hosts this relies on
clocks that agree to well within ``STALE_AFTER_S`` and on SQLite's locking working on the
filesystem (see docs/store-and-reliability.md: on NFS it does not, reliably).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

HEARTBEAT_S = 10.0
"""How often a running run renews its lease."""
STALE_AFTER_S = 60.0
"""A lease not renewed for this long is dead, whoever holds it (another host, a reused pid)."""
STALE_ENV = "VLMCLF_LEASE_STALE_S"
"""Override ``STALE_AFTER_S`` (seconds; the heartbeat runs at a sixth of it)."""

SCHEMA_V5 = """
CREATE TABLE leases (
    run_id TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    token TEXT NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL
);
"""


def stale_after_s() -> float:
    raw = os.environ.get(STALE_ENV)
    try:
        value = float(raw) if raw else STALE_AFTER_S
    except ValueError:
        raise ValueError(f"{STALE_ENV} must be a number of seconds, got {raw!r}") from None
    return value if value > 0 else STALE_AFTER_S


def heartbeat_s() -> float:
    return min(HEARTBEAT_S, stale_after_s() / 6)


_OPEN_TOKENS: set[str] = set()
"""Tokens of this process's open store objects: a lease of this process is alive while the
store object that took it is open (a run that raised in-process is dead at once)."""


@dataclass(frozen=True)
class Owner:
    """This process, as a lease holder: a fresh token per store object, so that two stores
    opened in one process are still told apart by ``finish_run``."""

    pid: int
    host: str
    token: str

    @classmethod
    def this_process(cls) -> Owner:
        owner = cls(os.getpid(), socket.gethostname(), uuid.uuid4().hex)
        _OPEN_TOKENS.add(owner.token)
        return owner

    def closed(self) -> None:
        """The store object is closed: its leases are dead from now on."""
        _OPEN_TOKENS.discard(self.token)


@dataclass(frozen=True)
class Lease:
    """One row of ``leases``."""

    run_id: str
    pid: int
    host: str
    token: str
    started_at: float
    heartbeat_at: float

    def alive(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if now - self.heartbeat_at > stale_after_s():
            return False
        if self.held_by_this_process():  # known exactly: a store object of ours still open
            return self.token in _OPEN_TOKENS
        return self.host != socket.gethostname() or pid_running(self.pid)

    def held_by_this_process(self) -> bool:
        return self.host == socket.gethostname() and self.pid == os.getpid()

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        since = datetime.fromtimestamp(self.started_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (f"pid {self.pid} on host {self.host}, running since {since}, last heartbeat "
                f"{max(0.0, now - self.heartbeat_at):.0f} s ago")  # fmt: skip


def pid_running(pid: int) -> bool:
    """Whether a process with this pid exists on this host and is not a zombie (a SIGKILLed
    child its parent has not reaped yet is dead for our purposes)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    except OSError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:  # Linux: "pid (comm) S ..."; the state follows the last ')'
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class RunBusyError(RuntimeError):
    """Another live process holds the run's lease: this one must not compute it too."""

    exit_code = 75  # EX_TEMPFAIL: try again later

    def __init__(self, path: Path, lease: Lease) -> None:
        super().__init__(
            f"{path}: run {lease.run_id} is being computed by another process "
            f"({lease.describe()}); wait for it to finish, or stop it and re-run to resume"
        )
        self.lease = lease


class LeaseLostError(RuntimeError):
    """This process's lease was taken over (its heartbeat was not written for longer than the
    stale limit, and another process started the run): stop before writing twice."""


class Heartbeat:
    """A daemon thread renewing one lease until stopped; ``check()`` raises once the lease was
    lost (the runner calls it between batches)."""

    def __init__(self, renew: Callable[[], bool], interval_s: float | None = None) -> None:
        self._renew = renew
        self._interval = heartbeat_s() if interval_s is None else interval_s
        self._stop = threading.Event()
        self._lost: str | None = None
        self._thread = threading.Thread(target=self._loop, name="vlmclf-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                held = self._renew()
            except Exception:  # noqa: BLE001 - a full disk or a busy store: try again next beat
                continue
            if not held:
                self._lost = "another process took over this run's lease"
                return

    def check(self) -> None:
        if self._lost is not None:
            raise LeaseLostError(self._lost)
