"""`vlmclf serve` under malformed, stalled, oversized and abandoned requests, over raw sockets.

Every case must get a JSON answer with the right status (never a dropped connection) and leave
the server answering the next request.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vlmclf.cli import app
from vlmclf.serve import ChatModelServer, ServeLimits


class SlowModel:
    """A stand-in VLM whose generate runs one slow forward per token through a torch module."""

    def __init__(self, seconds_per_token: float = 0.05):
        self.lm = torch.nn.Linear(2, 2)
        self.seconds_per_token = seconds_per_token
        self.generated_tokens = 0

    def generate(self, images, questions, max_new_tokens):
        for _ in range(max_new_tokens):
            time.sleep(self.seconds_per_token)
            self.lm(torch.zeros(1, 2))
            self.generated_tokens += 1
        return [f"answer to {q}" for q in questions]


LIMITS = ServeLimits(max_pixels=64 * 64, read_timeout_s=1.0, max_body_bytes=200_000)


@pytest.fixture()
def server():
    served = ChatModelServer(SlowModel(0.0), "slow", port=0, limits=LIMITS)
    served.start_in_thread()
    yield served
    served.shutdown()


def png_url(size: tuple[int, int] = (16, 16)) -> str:
    buffer = io.BytesIO()
    Image.new("L", size, 7).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat_body(url: str | None = None, max_tokens: int = 2, bare: bool = False) -> bytes:
    image = url or png_url()
    content = [{"type": "image_url", "image_url": image if bare else {"url": image}},
               {"type": "text", "text": "what is it?"}]  # fmt: skip
    body = {"model": "slow", "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": content}]}  # fmt: skip
    return json.dumps(body).encode()


def exchange(server, raw: bytes, timeout: float = 10.0) -> tuple[int, dict]:
    """Send raw bytes, read until the server closes or one full response arrived."""
    host, port = server.httpd.server_address[:2]
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        while True:
            try:
                piece = sock.recv(65536)
            except TimeoutError:
                break
            if not piece:
                break
            data += piece
            head, _, rest = data.partition(b"\r\n\r\n")
            length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")]  # fmt: skip
            if length and len(rest) >= length[0]:
                break
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head, f"no HTTP response to {raw[:60]!r}"
    status = int(head.split(b" ")[1])
    assert b"application/json" in head.lower(), head
    return status, json.loads(rest) if rest else {}


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body  # fmt: skip


def still_up(server) -> bool:
    status, body = exchange(server, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    return status == 200 and body["data"][0]["id"] == "slow"


@pytest.mark.parametrize(
    ("raw", "status", "words"),
    [
        (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400, "byte count"),
        (b"POST /v1/chat/completions HTTP/1.1\r\n\r\n", 411, "Content-Length"),
        (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n", 413, "limit"),
        (b"PUT /v1/chat/completions HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405, "PUT"),
        (b"DELETE /v1/models HTTP/1.1\r\n\r\n", 405, "DELETE"),
        (b"BREW /coffee HTTP/1.1\r\n\r\n", 405, "BREW"),
        (b"GET /v1/nothing HTTP/1.1\r\n\r\n", 404, "no route"),
        (b"GARBAGE\r\n\r\n", 400, ""),
        (b"GET / HTTP/1.1 extra\r\n\r\n", 400, "request"),
        (post("/v1/chat/completions", b"{not json"), 400, "not JSON"),
        (post("/v1/chat/completions", b"[1, 2]"), 400, "JSON object"),
        (post("/v1/chat/completions", chat_body(png_url((200, 200)))), 413, "--max-pixels"),
        (post("/v1/chat/completions", chat_body(bare=True)), 200, ""),  # image_url as a string
    ],
)
def test_malformed_requests_get_json_errors_and_the_server_stays_up(server, raw, status, words):
    got, body = exchange(server, raw)
    assert got == status, body
    if status >= 400:
        assert words in body["error"]["message"] and body["error"]["code"]
    assert still_up(server)


def test_options_answers_with_the_allowed_methods(server):
    host, port = server.httpd.server_address[:2]
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n")
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 204") and b"Allow: GET, POST, OPTIONS" in head


def test_a_stalled_upload_times_out_with_a_408_and_frees_its_thread(server):
    body = chat_body()
    start = time.monotonic()
    status, reply = exchange(server, post("/v1/chat/completions", body)[: -len(body) // 2])
    assert status == 408 and "did not arrive" in reply["error"]["message"]
    assert time.monotonic() - start < 5
    assert still_up(server)


def test_an_abandoned_generation_is_cancelled_and_the_next_request_is_served():
    model = SlowModel(seconds_per_token=0.05)
    served = ChatModelServer(model, "slow", port=0, limits=LIMITS)
    served.start_in_thread()
    try:
        host, port = served.httpd.server_address[:2]
        sock = socket.create_connection((host, port))
        sock.sendall(post("/v1/chat/completions", chat_body(max_tokens=400)))  # 20 s of work
        time.sleep(0.5)
        sock.close()  # the client gives up
        start = time.monotonic()
        status, reply = exchange(served, post("/v1/chat/completions", chat_body(max_tokens=2)))
        assert status == 200 and reply["choices"][0]["message"]["content"].startswith("answer")
        assert time.monotonic() - start < 5
        assert model.generated_tokens < 100
    finally:
        served.shutdown()


# Past the connection limit: idle connections give way, busy ones get a 503 (see
# test_serve_slowloris.py: idlers alone must not lock well-behaved clients out).


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        served = ChatModelServer(SlowModel(0.0), "slow", host="::1", port=0)
    except Exception as err:  # noqa: BLE001 - IPv6 compiled in but not configured
        pytest.skip(f"cannot bind ::1: {err}")
    served.start_in_thread()
    try:
        assert served.base_url.startswith("http://[::1]:")
        with socket.create_connection(("::1", served.httpd.server_address[1]), timeout=5) as s:
            s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        served.shutdown()


def test_cli_a_port_in_use_fails_before_the_model_loads(monkeypatch):
    import vlmclf.run.loading

    def must_not_load(*_args, **_kwargs):
        raise AssertionError("the model was loaded although the port is taken")

    monkeypatch.setattr(vlmclf.run.loading, "load_any_model", must_not_load)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--model", "random:llava", "--port", str(port)])
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1 port {port}" in result.output
    assert "Traceback" not in result.output


def test_cli_warns_loudly_when_listening_beyond_loopback_without_a_key(monkeypatch):
    import vlmclf.run.loading

    def stop_here(*_args, **_kwargs):
        raise ValueError("stopped before loading, as the test wants")

    monkeypatch.setattr(vlmclf.run.loading, "load_any_model", stop_here)
    monkeypatch.delenv("VLMCLF_SERVE_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["serve", "--model", "x", "--host", "0.0.0.0", "--port", "0"])
    assert "WARNING: listening on 0.0.0.0 without an API key" in result.output
    monkeypatch.setenv("VLMCLF_SERVE_API_KEY", "k")
    result = CliRunner().invoke(app, ["serve", "--model", "x", "--host", "0.0.0.0", "--port", "0"])
    assert "WARNING" not in result.output and "stopped before loading" in result.output


def test_decoding_is_bounded_by_the_semaphore(monkeypatch):
    from vlmclf.serve.images import ImageDecoder

    decoder = ImageDecoder(max_pixels=10_000, slots=2)
    inside = []
    peak = []
    real_open = Image.open

    def slow_open(*args, **kwargs):
        inside.append(1)
        peak.append(len(inside))
        time.sleep(0.05)
        inside.pop()
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", slow_open)
    data = base64.b64decode(png_url().split(",", 1)[1])
    threads = [threading.Thread(target=decoder.decode, args=(data,)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert max(peak) == 2


def _job():
    from vlmclf.serve.batching import Job
    from vlmclf.serve.protocol import ChatRequest

    return Job(ChatRequest(b"", "q", 2), Image.new("RGB", (4, 4)))


def test_the_batcher_waits_for_the_clients_it_just_answered_but_not_for_a_lone_one():
    from vlmclf.serve.batching import MicroBatcher

    batcher = MicroBatcher(lambda jobs: [j.finish(None) for j in jobs], window_s=0.005,
                           max_batch=8, max_wait_s=1.0)  # fmt: skip
    try:
        start = time.monotonic()
        for _ in range(5):  # one sequential client: its own next request is the one expected
            batcher.submit(_job()).done.wait(5)
        assert time.monotonic() - start < 0.5
        cohort = [batcher.submit(_job()) for _ in range(8)]
        for job in cohort:
            job.done.wait(5)
        assert batcher.batch_sizes[-1:] == [8], batcher.batch_sizes
        del batcher.batch_sizes[:]
        batcher.submit(_job())  # one client is quick; the other seven come back 50 ms later
        time.sleep(0.05)
        late = [batcher.submit(_job()) for _ in range(7)]
        for job in late:
            job.done.wait(5)
        assert batcher.batch_sizes == [8]
    finally:
        batcher.close()


def test_a_connection_counts_as_a_request_on_its_way_from_the_moment_it_is_accepted():
    # a burst of new clients: one request is read and decoded while another client's
    # connection is open but its bytes have not been read yet; both belong in one batch
    limits = ServeLimits(batch_window_ms=5, batch_max_wait_ms=2000)
    served = ChatModelServer(SlowModel(0.0), "slow", port=0, limits=limits)
    served.start_in_thread()
    try:
        host, port = served.httpd.server_address[:2]
        quiet = socket.create_connection((host, port), timeout=10)  # accepted, nothing sent yet
        time.sleep(0.2)
        replies: list[tuple[int, dict]] = []
        first = threading.Thread(target=lambda: replies.append(
            exchange(served, post("/v1/chat/completions", chat_body()))))  # fmt: skip
        first.start()
        time.sleep(0.3)  # far past the 5 ms window
        quiet.sendall(post("/v1/chat/completions", chat_body()))
        assert b" 200 " in quiet.recv(65536).split(b"\r\n")[0]
        quiet.close()
        first.join(10)
        assert replies and replies[0][0] == 200
        assert served.batcher.batch_sizes == [2]
    finally:
        served.shutdown()


def test_a_burst_of_new_connections_is_not_dropped_by_a_short_listen_backlog():
    # socketserver's default backlog of 5 drops the SYN of a sixth simultaneous client, which
    # retries a second later; nothing accepts here, so the kernel's queue alone must hold them
    served = ChatModelServer(None, "slow", port=0, limits=LIMITS)
    host, port = served.httpd.server_address[:2]
    sockets = []
    try:
        for _ in range(12):
            sockets.append(socket.create_connection((host, port), timeout=0.5))
    finally:
        for sock in sockets:
            sock.close()
        served.shutdown()
    assert len(sockets) == 12


def test_cli_caps_torch_threads_before_loading_the_model(monkeypatch, torch_threads_restored):
    import vlmclf.run.loading

    seen = []

    def record_threads(*_args, **_kwargs):
        seen.append(torch.get_num_threads())
        raise ValueError("stopped before loading, as the test wants")

    monkeypatch.setattr(vlmclf.run.loading, "load_any_model", record_threads)
    torch.set_num_threads(2)
    result = CliRunner().invoke(app, ["serve", "--model", "x", "--port", "0", "--threads", "1"])
    assert result.exit_code == 2 and seen == [1]
