"""`vlmclf serve` against slow clients (issue 21, item 1), over real sockets on loopback: a
request head or body dripped a byte at a time is cut at its total deadline, and idle
connections give way to a real client instead of locking it out with 503s."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from test_serve_hardening import SlowModel, chat_body, exchange, post
from typer.testing import CliRunner

from vlmclf.cli import app
from vlmclf.serve import ChatModelServer, ServeLimits

HEAD_S, BODY_S = 1.5, 1.5
DRIP_EVERY_S = 0.3


@pytest.fixture()
def served():
    limits = ServeLimits(read_timeout_s=10.0, head_timeout_s=HEAD_S, body_timeout_s=BODY_S,
                         max_connections=8, max_pixels=64 * 64)  # fmt: skip
    server = ChatModelServer(SlowModel(0.0), "slow", port=0, limits=limits)
    server.start_in_thread()
    yield server
    server.shutdown()


def _drip(
    server: ChatModelServer, prefix: bytes, drip: bytes, seconds: float
) -> tuple[float, bytes]:
    """Send ``prefix``, then ``drip`` one byte every DRIP_EVERY_S (never silent for long);
    returns when the server closed the connection (or ``seconds`` passed): (when, reply)."""
    host, port = server.httpd.server_address[:2]
    start = time.monotonic()
    with socket.create_connection((host, port)) as sock:
        sock.sendall(prefix)
        sock.settimeout(DRIP_EVERY_S)
        reply = b""
        for byte in drip:
            if time.monotonic() - start > seconds:
                break
            try:
                sock.sendall(bytes([byte]))
                piece = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:  # reset: the server closed it
                return time.monotonic() - start, reply
            if not piece:
                return time.monotonic() - start, reply
            reply += piece
        return time.monotonic() - start, reply


def test_a_dripped_request_head_is_cut_at_the_head_deadline(served) -> None:
    results: list[tuple[float, bytes]] = []
    header = b"X-Slow: " + b"a" * 400
    threads = [threading.Thread(target=lambda: results.append(
        _drip(served, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n", header, 20)))
        for _ in range(5)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 5
    for closed_after, reply in results:
        assert closed_after < HEAD_S + 2.0, closed_after  # not kept alive by the drip
        assert reply == b"" or b" 408 " in reply.split(b"\r\n")[0]


def test_a_dripped_body_is_cut_at_the_body_deadline_with_a_408(served) -> None:
    body = chat_body()
    head = post("/v1/chat/completions", body)[: -len(body)]
    closed_after, reply = _drip(served, head, body, 20)
    assert closed_after < BODY_S + 2.0, closed_after
    assert b" 408 " in reply.split(b"\r\n")[0] and b"--body-timeout" in reply


def test_idle_connections_give_way_to_a_real_client_instead_of_a_503() -> None:
    limits = ServeLimits(max_connections=4, read_timeout_s=30.0, max_pixels=64 * 64)
    server = ChatModelServer(SlowModel(0.0), "slow", port=0, limits=limits)
    server.start_in_thread()
    try:
        host, port = server.httpd.server_address[:2]
        idlers = [socket.create_connection((host, port)) for _ in range(4)]  # no key, no byte
        idlers[0].sendall(b"GET /v1/mod")  # one has begun a head, and stalls
        time.sleep(0.3)
        for _ in range(3):  # each new client takes the place of an idler
            status, reply = exchange(server, post("/v1/chat/completions", chat_body()))
            assert status == 200, reply
            assert reply["choices"][0]["message"]["content"].startswith("answer")
        for sock in idlers:
            sock.close()
    finally:
        server.shutdown()


def test_connections_that_are_all_being_answered_still_get_a_503_past_the_limit() -> None:
    limits = ServeLimits(max_connections=2, read_timeout_s=30.0, max_pixels=64 * 64)
    server = ChatModelServer(SlowModel(0.05), "slow", port=0, limits=limits)
    server.start_in_thread()
    try:
        host, port = server.httpd.server_address[:2]
        busy = [socket.create_connection((host, port)) for _ in range(2)]
        for sock in busy:  # two generations of 100 tokens (5 s each)
            sock.sendall(post("/v1/chat/completions", chat_body(max_tokens=100)))
        time.sleep(0.5)
        status, reply = exchange(server, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503 and reply["error"]["code"] == "server_busy"
        for sock in busy:
            sock.close()
    finally:
        server.shutdown()


@pytest.mark.parametrize(("flag", "value"), [("--head-timeout", "0"), ("--body-timeout", "-1")])
def test_cli_refuses_a_non_positive_deadline_naming_the_flag(flag: str, value: str) -> None:
    result = CliRunner().invoke(app, ["serve", "--model", "random:llava", "--port", "0", flag,
                                      value])  # fmt: skip
    assert result.exit_code == 2 and f"{flag} must be positive" in result.output
