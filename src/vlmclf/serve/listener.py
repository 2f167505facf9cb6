"""The listening socket: IPv4 or IPv6, a cap on open connections, and arrival notices.

Past ``max_connections`` the connection that has waited longest for its request head is closed
to make room (``serve.deadlines``); when none is waiting, a new connection gets a JSON 503 at
once instead of a thread; every
accepted connection is reported to the batcher (``expect_request``) before a handler thread has
read a byte of it, and the listen backlog holds ``max_connections``, so a burst of new clients
is batched whole.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from vlmclf.serve.deadlines import ConnectionTable
from vlmclf.serve.protocol import error_body

EVICTION_WAIT_S = 2.0  # how long a new connection waits for the slot an eviction frees


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ConnectionServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        max_connections: int,
        expect_request: Callable[[], Callable[[], None]],
        head_timeout_s: float = 10.0,
    ):
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._slots = threading.BoundedSemaphore(max_connections)
        # socketserver listens with a backlog of 5: a sixth client connecting at the same
        # moment has its SYN dropped and retries a second later (a batch short by one)
        self.request_queue_size = max(max_connections, 5)
        self._expect_request = expect_request
        self._first_request = threading.local()  # per handler thread: its release function
        self.head_timeout_s = head_timeout_s
        self.connections = ConnectionTable()  # phases, deadlines, the reaper (serve.deadlines)
        try:
            super().__init__(address, handler)
        except BaseException:
            self.connections.close()
            raise

    def server_close(self) -> None:
        self.connections.close()
        super().server_close()

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Past ``max_connections`` open connections, make room by closing the one that has
        waited longest for its request head; refuse at once, with a 503, when every open
        connection is sending a body or being answered."""
        if not self._slots.acquire(blocking=False) and not (
            self.connections.evict_longest_waiting()
            and self._slots.acquire(timeout=EVICTION_WAIT_S)
        ):
            _refuse_busy(request)
            self.shutdown_request(request)
            return
        self.connections.add(request, self.head_timeout_s)
        release = self._expect_request()  # a new connection: its request is on its way
        try:
            super().process_request(request, (client_address, release))
        except BaseException:
            release()
            self.connections.remove(request)
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        address, release = client_address
        self._first_request.release = release
        try:
            super().process_request_thread(request, address)
        finally:
            release()
            self.connections.remove(request)
            self._slots.release()

    def first_request_seen(self) -> None:
        """Called by a handler once its connection's first request is in hand (or answered)."""
        getattr(self._first_request, "release", lambda: None)()


def _refuse_busy(sock: socket.socket) -> None:
    data = json.dumps(
        error_body("too many open connections; retry shortly", "server_busy")
    ).encode()
    head = (
        f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    try:
        sock.settimeout(1.0)
        sock.sendall(head.encode() + data)
    except OSError:
        pass
