"""The HTTP side: routes, authentication, limits, streaming, and never a dropped connection.

Every answer is JSON (OpenAI's error shape for errors), including the stdlib's own errors
(malformed request lines, unknown methods). Limits are checked in the order that costs least:
connection count, API key, Content-Length, then the body is read under a socket timeout and a
total deadline (the request head has one too: ``serve.deadlines``), then
the image header, then pixels are decoded (a few at a time), then the model is asked.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import queue
import select
import socket
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from vlmclf.serve.batching import CLIENT_GONE, Job, MicroBatcher
from vlmclf.serve.deadlines import BODY, BUSY, HEAD, default_body_timeout_s
from vlmclf.serve.engine import ModelEngine
from vlmclf.serve.images import ImageDecoder
from vlmclf.serve.listener import ConnectionServer
from vlmclf.serve.protocol import (
    ChunkStream,
    RequestError,
    completion_body,
    error_body,
    model_object,
    parse_chat_request,
)

logger = logging.getLogger("vlmclf.serve")
API_KEY_VARIABLE = "VLMCLF_SERVE_API_KEY"


@dataclass(frozen=True)
class ServeLimits:
    """What one client may ask of the server; each has a ``vlmclf serve`` option."""

    max_body_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 25_000_000
    decode_slots: int = 2
    read_timeout_s: float = 30.0
    head_timeout_s: float = 10.0  # request line and headers, in total (also keep-alive idle)
    body_timeout_s: float | None = None  # the body in total; None: 10 s + 1 s per MiB sent
    max_connections: int = 64
    max_tokens_limit: int = 1024
    batch_window_ms: float = 5.0
    max_batch: int = 8
    batch_max_wait_ms: float = 100.0  # waiting for requests already on their way


class ServeError(Exception):
    """The server cannot start (address in use, unknown host); the message says why."""


class ChatModelServer:
    """Serves ``model`` under ``served_name`` at ``http://host:port/v1``.

    The socket is bound at construction, before any model is attached, so a port in use is
    found before a model takes 30 s to load: pass ``model=None`` and ``attach`` it later.
    """

    def __init__(
        self,
        model: Any,
        served_name: str,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        api_key: str | None = None,
        limits: ServeLimits | None = None,
    ):
        self.served_name = served_name
        self.limits = limits or ServeLimits()
        self._api_key = api_key.encode() if api_key else None
        self.decoder = ImageDecoder(self.limits.max_pixels, self.limits.decode_slots)
        self.engine: ModelEngine | None = None
        self.batcher: MicroBatcher | None = None
        self._serving = False
        try:
            self.httpd = ConnectionServer(
                (host, port), _handler_class(self), self.limits.max_connections,
                self.expect_request, head_timeout_s=self.limits.head_timeout_s,
            )  # fmt: skip
        except OSError as err:
            raise ServeError(f"cannot listen on {host} port {port}: {err.strerror or err}") from err
        if model is not None:
            self.attach(model)

    def attach(self, model: Any) -> None:
        """Start answering with ``model``."""
        self.engine = ModelEngine(model)
        self.batcher = MicroBatcher(
            self.engine.run_group,
            window_s=self.limits.batch_window_ms / 1000.0,
            max_batch=self.limits.max_batch,
            max_wait_s=self.limits.batch_max_wait_ms / 1000.0,
            group_key=self.engine.group_key,
        )

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/v1"

    def serve_forever(self) -> None:
        self._serving = True
        self.httpd.serve_forever(poll_interval=0.2)

    def start_in_thread(self) -> threading.Thread:
        self._serving = True
        thread = threading.Thread(target=self.serve_forever, daemon=True)
        thread.start()
        return thread

    def shutdown(self) -> None:
        if self._serving:  # httpd.shutdown() waits for a serve_forever loop that must exist
            self.httpd.shutdown()
        self.httpd.server_close()
        if self.batcher is not None:
            self.batcher.close()

    def authorized(self, header: str | None) -> bool:
        if self._api_key is None:
            return True
        scheme, _, token = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self._api_key
        )

    def models_payload(self) -> dict[str, Any]:
        return {"object": "list", "data": [model_object(self.served_name)]}

    def submit(self, body: dict[str, Any]) -> Job:
        """Check and decode one request and queue it for the model."""
        request = parse_chat_request(body, self.served_name, self.limits.max_tokens_limit)
        if self.batcher is None:
            raise RequestError(503, "the model is still loading", "server_busy")
        return self.batcher.submit(Job(request, self.decoder.decode(request.image_bytes)))

    def expect_request(self) -> Callable[[], None]:
        """Tell the batcher a request is on its way; returns what to call when it is not."""
        return self.batcher.expect() if self.batcher is not None else lambda: None

    def arriving(self) -> Any:
        """While held, the batcher waits for this request before starting a batch without it."""
        return self.batcher.arriving() if self.batcher is not None else contextlib.nullcontext()

    @staticmethod
    def wait(job: Job, client_gone: Any) -> Any:
        """The job's answer; a client that disconnects meanwhile cancels it."""
        while not job.done.wait(0.05):
            if client_gone():
                job.cancelled.set()
        if job.error is not None:
            raise job.error
        return job.answer

    @staticmethod
    def next_piece(job: Job, client_gone: Any) -> str | None:
        """The job's next streamed text piece; None once it has finished and all were taken."""
        while True:
            try:
                return job.pieces.get(timeout=0.05)
            except queue.Empty:
                if job.done.is_set() and job.pieces.empty():
                    return None
                if client_gone():
                    job.cancelled.set()


def _handler_class(server: ChatModelServer) -> type[BaseHTTPRequestHandler]:
    limits = server.limits

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = limits.read_timeout_s  # socket timeout: stalled uploads and idle keep-alives
        server_version = "vlmclf-serve"
        error_content_type = "application/json"

        def do_GET(self) -> None:
            self._guarded(self._get)

        def do_POST(self) -> None:
            self._guarded(self._post)

        def handle_one_request(self) -> None:
            if self.server.connections.timed_out(self.connection):
                self.close_connection = True  # a deadline passed: nothing more is read
                return
            # the next request head (after a keep-alive answer too) has --head-timeout in all
            self.server.connections.enter(self.connection, HEAD, limits.head_timeout_s)
            try:
                super().handle_one_request()
            finally:  # whatever the first request was, it is no longer on its way
                self.server.first_request_seen()

        def do_OPTIONS(self) -> None:
            self.send_response(204)
            self.send_header("Allow", "GET, POST, OPTIONS")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _not_allowed(self) -> None:
            self._error(
                RequestError(
                    405,
                    f"method {self.command} is not allowed; use GET or POST",
                    "method_not_allowed",
                ),
                close=True,
            )

        do_PUT = do_DELETE = do_PATCH = do_HEAD = _not_allowed

        def _guarded(self, route: Any) -> None:
            """Every failure becomes a JSON answer; the connection is never just dropped."""
            self._body_read = self.command != "POST"
            try:
                if self.server.connections.timed_out(self.connection):
                    self._body_read = False  # whatever follows is not read: close after
                    raise RequestError(
                        408, f"the request head did not arrive within {limits.head_timeout_s:g} "
                        "s (--head-timeout)", "request_timeout",
                    )  # fmt: skip
                if not server.authorized(self.headers.get("Authorization")):
                    raise RequestError(
                        401,
                        "missing or wrong API key (send Authorization: Bearer <key>)",
                        "invalid_api_key",
                    )
                if self.command != "POST":  # nothing more to read: no deadline while answering
                    self.server.connections.enter(self.connection, BUSY, None)
                route()
            except RequestError as err:
                # an unread body would be taken for the next request: close instead
                self._error(err, close=not self._body_read or err.status >= 500)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            except Exception as err:  # noqa: BLE001 - answer, log, stay up
                logger.exception("unexpected error answering %s %s", self.command, self.path)
                self._error(
                    RequestError(500, f"internal error: {type(err).__name__}", "server_error"),
                    close=True,
                )

        def _get(self) -> None:
            path = urllib.parse.urlsplit(self.path).path.rstrip("/")
            if path == "/v1/models":
                self._send(200, server.models_payload())
            elif path.startswith("/v1/models/"):
                wanted = urllib.parse.unquote(path.removeprefix("/v1/models/"))
                if wanted != server.served_name:
                    raise RequestError(404, f"model {wanted!r} does not exist", "model_not_found")
                self._send(200, model_object(server.served_name))
            else:
                raise RequestError(404, f"no route GET {path}", "not_found")

        def _post(self) -> None:
            path = urllib.parse.urlsplit(self.path).path.rstrip("/")
            if path != "/v1/chat/completions":
                raise RequestError(404, f"no route POST {path}", "not_found")
            with server.arriving():
                self.server.first_request_seen()
                job = server.submit(self._read_json())
            if job.request.stream:
                try:
                    self._stream(job)
                finally:  # a client that stopped reading the stream cancels its generation
                    if not job.finished:
                        job.cancelled.set()
            else:
                self._send(
                    200, completion_body(server.wait(job, self._client_gone), server.served_name)
                )

        def _read_json(self) -> dict[str, Any]:
            raw = self.headers.get("Content-Length")
            if raw is None:
                raise RequestError(
                    411,
                    "send the body with a Content-Length header (chunked uploads are not accepted)",
                    "length_required",
                )
            if not raw.strip().isdigit():
                raise RequestError(
                    400, f"Content-Length {raw!r} is not a byte count", "invalid_request_error"
                )
            length = int(raw)
            if length > limits.max_body_bytes:
                raise RequestError(
                    413,
                    f"the body is {length} bytes, over this server's limit "
                    f"of {limits.max_body_bytes} (--max-body-mb)",
                    "body_too_large",
                )
            deadline = limits.body_timeout_s or default_body_timeout_s(length)
            self.server.connections.enter(self.connection, BODY, deadline)
            try:
                data = self.rfile.read(length)
            except TimeoutError as err:
                raise RequestError(
                    408,
                    f"the body did not arrive within {limits.read_timeout_s:g} s",
                    "request_timeout",
                ) from err
            self._body_read = len(data) == length  # short: what follows is no request, close
            self.server.connections.enter(self.connection, BUSY, None)  # the model's turn
            if len(data) < length and self.server.connections.timed_out(self.connection):
                raise RequestError(
                    408, f"the body did not arrive within {deadline:.1f} s (--body-timeout)",
                    "request_timeout",
                )  # fmt: skip
            if len(data) < length:
                raise RequestError(400, f"the body ended after {len(data)} of {length} bytes")
            try:
                body = json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise RequestError(400, f"the body is not JSON: {err}") from err
            except RecursionError as err:  # [[[[...]]]] 100,000 deep: the client's mistake
                raise RequestError(400, "the body's JSON is nested too deeply") from err
            if not isinstance(body, dict):
                raise RequestError(400, "the body must be a JSON object")
            return body

        def _client_gone(self) -> bool:
            """True when the client closed its end (readable socket with nothing to read)."""
            try:
                readable, _, _ = select.select([self.connection], [], [], 0)
                return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
            except (OSError, ValueError):
                return True

        def _send(self, status: int, payload: dict[str, Any], close: bool = False) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _stream(self, job: Job) -> None:
            """Server-Sent Events: text pieces as the model decodes them, then the finish.

            Nothing is sent before the first piece or the outcome, so a request that fails
            before any text still gets its JSON error with the right status."""
            stream = ChunkStream(server.served_name, job.request.include_usage)
            piece = server.next_piece(job, self._client_gone)
            if piece is None and job.error is not None:
                raise job.error
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")  # the stream ends when the connection does
            self.end_headers()
            self.close_connection = True
            self._event(stream.opening())
            streamed = piece is not None
            while piece is not None:
                self._event(stream.text(piece))
                piece = server.next_piece(job, self._client_gone)
            if job.error is not None:
                err = job.error
                self._event(error_body(str(err), err.code, err.param))
            elif job.answer is not None:
                for chunk in ([] if streamed else stream.whole(job.answer)) + stream.closing(
                    job.answer
                ):
                    self._event(chunk)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

        def _event(self, chunk: dict[str, Any]) -> None:
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        def _error(self, err: RequestError, close: bool = False) -> None:
            if err.status == CLIENT_GONE:
                self.close_connection = True
                return
            try:
                self._send(err.status, error_body(str(err), err.code, err.param), close=close)
            except OSError:
                self.close_connection = True

        def send_error(
            self, code: int, message: str | None = None, explain: str | None = None
        ) -> None:
            """The stdlib's own errors (bad request line, unknown method) as JSON too."""
            if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
                self.request_version = "HTTP/1.0"  # an unparsable line still gets a status line
            text = message or self.responses.get(code, ("error",))[0]
            kind = "method_not_allowed" if code == 501 else "invalid_request_error"
            status = 405 if code == 501 else code
            self._error(RequestError(status, f"{text}", kind), close=True)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
            pass  # requests are not logged: they may carry credentials in headers

    return Handler
