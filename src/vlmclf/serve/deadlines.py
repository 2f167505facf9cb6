"""Total deadlines per connection, so that a slow client cannot hold one forever (slowloris).

A socket timeout only fires when a connection is silent; a client sending one byte every few
seconds never is. So every open connection has a phase and a deadline: ``head`` (waiting for
the request line and headers, also between keep-alive requests) ends at ``--head-timeout``
after it began, ``body`` (an authorised request's body) at ``--body-timeout`` (by default 10 s
plus one second per MiB announced), and ``busy`` (the model is answering) has none. A reaper
thread closes the reading side of a connection past its deadline: the handler's blocked read
returns at once, the client gets a 408 where one can still be sent, and the slot is freed.

Connections still in ``head`` are also the ones that give way: when every slot is taken, the
one that has waited longest for its request head is closed to make room, so idlers alone
(which have not even sent an API key) can never lock well-behaved clients out. Only when every
connection is sending a body or being answered does a new one get the 503.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass

HEAD, BODY, BUSY = "head", "body", "busy"
REAP_INTERVAL_S = 0.1
BODY_BASE_S = 10.0
BODY_BYTES_PER_S = 1024 * 1024  # the slowest upload the default body deadline allows


@dataclass
class _Connection:
    phase: str
    deadline: float | None
    since: float
    timed_out: str | None = None  # the phase whose deadline passed


def default_body_timeout_s(length: int) -> float:
    """The body deadline when ``--body-timeout`` is not given: 10 s plus 1 s per MiB."""
    return BODY_BASE_S + length / BODY_BYTES_PER_S


class ConnectionTable:
    """Every open connection's phase and deadline, and the reaper that enforces them."""

    def __init__(self) -> None:
        self._open: dict[socket.socket, _Connection] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="vlmclf-serve-reaper",
                                        daemon=True)  # fmt: skip
        self._reaper.start()

    def add(self, sock: socket.socket, timeout_s: float) -> None:
        now = time.monotonic()
        with self._lock:
            self._open[sock] = _Connection(HEAD, now + timeout_s, now)

    def remove(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.pop(sock, None)

    def enter(self, sock: socket.socket, phase: str, timeout_s: float | None) -> None:
        """The connection is now in ``phase``, which must end within ``timeout_s`` (None: no
        deadline)."""
        now = time.monotonic()
        with self._lock:
            entry = self._open.get(sock)
            if entry is None or entry.timed_out is not None:
                return
            entry.phase, entry.since = phase, now
            entry.deadline = None if timeout_s is None else now + timeout_s

    def timed_out(self, sock: socket.socket) -> str | None:
        """The phase whose deadline closed this connection's reading side, if one did."""
        with self._lock:
            entry = self._open.get(sock)
            return None if entry is None else entry.timed_out

    def evict_longest_waiting(self) -> bool:
        """Close the connection that has waited longest for a request head; False if every
        connection is sending a body or being answered."""
        with self._lock:
            waiting = [(c.since, s) for s, c in self._open.items()
                       if c.phase == HEAD and c.timed_out is None]  # fmt: skip
            if not waiting:
                return False
            _, sock = min(waiting, key=lambda pair: pair[0])
            self._open[sock].timed_out = "evicted"
        _close_reading(sock)
        return True

    def close(self) -> None:
        self._stopped.set()

    def _reap(self) -> None:
        while not self._stopped.wait(REAP_INTERVAL_S):
            now = time.monotonic()
            with self._lock:
                late = [(s, c) for s, c in self._open.items() if _past(c, now)]
                for _, entry in late:
                    entry.timed_out = entry.phase
            for sock, _ in late:
                _close_reading(sock)


def _past(entry: _Connection, now: float) -> bool:
    return entry.timed_out is None and entry.deadline is not None and now > entry.deadline


def _close_reading(sock: socket.socket) -> None:
    """End the reading side: a handler blocked in recv returns at once, and the connection can
    still carry one last (error) answer."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
