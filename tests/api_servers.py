"""Fake OpenAI / Anthropic / Gemini servers for the API tests: real HTTP on 127.0.0.1.

Each ``FakeApiServer`` is a ``ThreadingHTTPServer`` on an ephemeral port in a background thread
that speaks one protocol well enough for the client (chat request in, answer + usage out, model
list, auth errors) and records every request it sees. Faults are scripted per request index
(arrival order), per prompt (consumed one per arrival of that prompt), for a prompt forever, or
by a plan function ``(index, prompt) -> Fault | None``.

Answers are deterministic: ``answer(prompt)`` (default ``"answer to <prompt>"``); one word is one
output token, and an answer longer than ``max_tokens`` words is cut with the protocol's
"length" finish reason, as a real server does.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

INPUT_TOKENS = 100  # what every request "costs" on input, so cost sums are easy to check


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour. ``kind``: status, sleep, malformed, empty, hang, cut, echo_key."""

    kind: str
    status: int = 500
    retry_after: str | None = None
    seconds: float = 0.0
    body: bytes | None = None


def status(code: int, retry_after: float | str | None = None, body: bytes | None = None) -> Fault:
    return Fault("status", status=code, body=body,
                 retry_after=None if retry_after is None else str(retry_after))


def sleep(seconds: float) -> Fault:
    """Answer normally, but only after ``seconds`` (past the client's timeout)."""
    return Fault("sleep", seconds=seconds)


MALFORMED = Fault("malformed")  # 200 with a body that is not JSON
EMPTY = Fault("empty")  # 200 with no text and the "length" finish reason
HANG = Fault("hang")  # never answer (until the server is closed)
CUT = Fault("cut")  # promise a longer body than is sent, then close the connection


def echo_key(code: int = 500) -> Fault:
    """An error whose message repeats the credentials the client sent (a leaky server)."""
    return Fault("echo_key", status=code)


@dataclass
class Recorded:
    index: int
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    prompt: str | None
    image_b64: str | None
    started: float
    fault: Fault | None


@dataclass
class FakeApiServer:
    protocol: str  # "openai", "anthropic" or "gemini"
    models: tuple[str, ...] = ("test-model",)
    key: str | None = "test-key"  # None: accept any or no key
    answer: Callable[[str], str] = lambda prompt: f"answer to {prompt}"
    logprobs: Callable[[str], list[tuple[str, float]]] | None = None
    by_index: dict[int, Fault] = field(default_factory=dict)
    by_prompt: dict[str, list[Fault]] = field(default_factory=dict)
    always: dict[str, Fault] = field(default_factory=dict)
    plan: Callable[[int, str], Fault | None] | None = None
    delay_s: float = 0.0  # every answer takes this long (to observe concurrency)

    def __post_init__(self) -> None:
        self.requests: list[Recorded] = []
        self.answered: list[str] = []  # prompts of 200 answers fully written
        self.in_flight = 0
        self.max_in_flight = 0
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,),
                                        daemon=True)

    # ----- lifecycle ------------------------------------------------------------------

    def __enter__(self) -> FakeApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        root = "/v1beta" if self.protocol == "gemini" else "/v1"
        return f"http://{host}:{port}{root}"

    @property
    def chat_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST"]

    # ----- request handling -----------------------------------------------------------

    def record(self, handler: BaseHTTPRequestHandler, body: Any) -> Recorded:
        prompt, image = _extract(self.protocol, body) if handler.command == "POST" else (None,
                                                                                           None)
        with self._lock:
            index = len([r for r in self.requests if r.method == "POST"])
            fault = self._fault_for(index, prompt) if handler.command == "POST" else None
            entry = Recorded(index, handler.command, handler.path,
                             {k.lower(): v for k, v in handler.headers.items()}, body, prompt,
                             image, time.monotonic(), fault)
            self.requests.append(entry)
        return entry

    def _fault_for(self, index: int, prompt: str | None) -> Fault | None:
        if index in self.by_index:
            return self.by_index[index]
        if prompt in self.always:
            return self.always[prompt]
        queue = self.by_prompt.get(prompt or "")
        if queue:
            return queue.pop(0)
        return self.plan(index, prompt or "") if self.plan else None

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def key_ok(self, headers: dict[str, str]) -> bool:
        if self.key is None:
            return True
        sent = {
            "openai": headers.get("authorization", "").removeprefix("Bearer "),
            "anthropic": headers.get("x-api-key", ""),
            "gemini": headers.get("x-goog-api-key", ""),
        }[self.protocol]
        return sent == self.key

    def chat_path(self, path: str) -> bool:
        """Whether ``path`` is this protocol's chat endpoint (any model, for Gemini)."""
        if self.protocol == "gemini":
            return path.startswith("/v1beta/models/") and path.endswith(":generateContent")
        return path == {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}[
            self.protocol]

    def served(self, entry: Recorded) -> str | None:
        """The model the request asks for, if this server serves it."""
        if self.protocol == "gemini":
            name = entry.path.split("/models/", 1)[-1].split(":", 1)[0]
        else:
            name = (entry.body or {}).get("model", "")
        return name if name in self.models else None

    def reply(self, entry: Recorded) -> dict[str, Any]:
        body = entry.body
        limit = _max_tokens(self.protocol, body)
        words = self.answer(entry.prompt or "").split()
        text, truncated = " ".join(words[:limit]), len(words) > limit
        if entry.fault is not None and entry.fault.kind == "empty":
            text, truncated = "", True
        top = None
        if self.protocol == "openai" and body.get("logprobs") and self.logprobs is not None:
            top = self.logprobs(entry.prompt or "")[: body.get("top_logprobs", 0)]
        return _answer_json(self.protocol, text, truncated, len(text.split()), top)

    def model_list(self) -> dict[str, Any]:
        if self.protocol == "gemini":
            return {"models": [{"name": f"models/{m}"} for m in self.models]}
        return {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]}


def _extract(protocol: str, body: Any) -> tuple[str | None, str | None]:
    """The prompt text and the base64 image of a chat request."""
    try:
        if protocol == "gemini":
            parts = body["contents"][0]["parts"]
            texts = [p["text"] for p in parts if "text" in p]
            images = [p["inline_data"]["data"] for p in parts if "inline_data" in p]
        else:
            content = body["messages"][0]["content"]
            texts = [c["text"] for c in content if c["type"] == "text"]
            if protocol == "openai":
                images = [c["image_url"]["url"] for c in content if c["type"] == "image_url"]
            else:
                images = [c["source"]["data"] for c in content if c["type"] == "image"]
    except (KeyError, IndexError, TypeError):
        return None, None
    return (texts[0] if texts else None), (images[0] if images else None)


def _max_tokens(protocol: str, body: Any) -> int:
    if protocol == "gemini":
        return body["generationConfig"]["maxOutputTokens"]
    return body["max_tokens"]


def _answer_json(protocol: str, text: str, truncated: bool, out_tokens: int,
                 top: list[tuple[str, float]] | None) -> dict[str, Any]:
    if protocol == "openai":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": "length" if truncated else "stop"}
        if top is not None:
            first = top[0] if top else (text, 0.0)
            choice["logprobs"] = {"content": [{
                "token": first[0], "logprob": first[1],
                "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]}]}
        return {"id": "chatcmpl-1", "object": "chat.completion", "choices": [choice],
                "usage": {"prompt_tokens": INPUT_TOKENS, "completion_tokens": out_tokens,
                          "total_tokens": INPUT_TOKENS + out_tokens}}
    if protocol == "anthropic":
        return {"id": "msg_1", "type": "message", "role": "assistant",
                "content": [{"type": "text", "text": text}] if text else [],
                "stop_reason": "max_tokens" if truncated else "end_turn",
                "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": out_tokens}}
    return {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                            "finishReason": "MAX_TOKENS" if truncated else "STOP"}],
            "usageMetadata": {"promptTokenCount": INPUT_TOKENS,
                              "candidatesTokenCount": out_tokens,
                              "totalTokenCount": INPUT_TOKENS + out_tokens}}


def _error_json(protocol: str, code: int, message: str, kind: str) -> dict[str, Any]:
    if protocol == "anthropic":
        return {"type": "error", "error": {"type": kind, "message": message}}
    if protocol == "gemini":
        return {"error": {"code": code, "message": message, "status": kind.upper()}}
    return {"error": {"message": message, "type": kind, "code": kind}}


def _make_handler(server: FakeApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep tests quiet
            pass

        def do_GET(self) -> None:  # noqa: N802
            entry = server.record(self, None)
            if not server.key_ok(entry.headers):
                return self._send_json(401, _error_json(server.protocol, 401, "bad key",
                                                        "authentication_error"))
            root = "/v1beta" if server.protocol == "gemini" else "/v1"
            if self.path.split("?")[0] == f"{root}/models":
                return self._send_json(200, server.model_list())
            self._send_json(404, _error_json(server.protocol, 404, "no such path", "not_found"))

        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            server.enter()
            try:
                self._handle_post(json.loads(raw))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout, killed)
            finally:
                server.leave()

        def _handle_post(self, body: Any) -> None:
            entry = server.record(self, body)
            if not server.key_ok(entry.headers):
                return self._send_json(401, _error_json(
                    server.protocol, 401, "invalid x-api-key", "authentication_error"))
            if not server.chat_path(entry.path):
                return self._send_json(404, _error_json(server.protocol, 404, "no such path",
                                                        "not_found"))
            if server.served(entry) is None:
                return self._send_json(404, _error_json(
                    server.protocol, 404, "The model does not exist", "model_not_found"))
            fault = entry.fault
            if fault is not None and self._injected(fault, entry):
                return
            if server.delay_s:
                time.sleep(server.delay_s)
            self._send_json(200, server.reply(entry))
            with server._lock:
                server.answered.append(entry.prompt or "")

        def _injected(self, fault: Fault, entry: Recorded) -> bool:
            """Carry out ``fault``; True when it replaced the normal answer."""
            if fault.kind == "sleep":
                time.sleep(fault.seconds)
                return False
            if fault.kind == "empty":
                return False
            if fault.kind == "hang":
                server.release.wait(60)
                return True
            if fault.kind == "malformed":
                self._send_bytes(200, b'{"choices": [{"message": {"content": "half', {})
                return True
            if fault.kind == "cut":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "5000")
                self.end_headers()
                self.wfile.write(b'{"choices": [')
                self.close_connection = True
                return True
            if fault.kind == "echo_key":
                leaked = json.dumps(entry.headers)
                message = f"internal error while serving credentials {leaked}"
                self._send_json(fault.status, _error_json(server.protocol, fault.status,
                                                          message, "api_error"))
                return True
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            body = fault.body if fault.body is not None else json.dumps(_error_json(
                server.protocol, fault.status, f"injected HTTP {fault.status}", "api_error"
            )).encode()
            self._send_bytes(fault.status, body, headers)
            return True

        def _send_json(self, code: int, payload: Any) -> None:
            self._send_bytes(code, json.dumps(payload).encode(), {})

        def _send_bytes(self, code: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    return Handler


def decode_image(image_field: str) -> bytes:
    """The PNG bytes of an image field (a data URL for OpenAI, bare base64 otherwise)."""
    return base64.b64decode(image_field.split("base64,", 1)[-1])


def make_images(n: int, size: tuple[int, int] = (32, 24)) -> list[Any]:
    """``n`` small RGB images that differ in colour (so in bytes, so in cache key)."""
    from PIL import Image

    return [Image.new("RGB", size, (i * 7 % 256, i * 13 % 256, 255 - i % 256)) for i in range(n)]


def fast_settings(server: FakeApiServer, cache_path: Any, **overrides: Any) -> dict[str, Any]:
    """load_api_model keyword arguments for tests: loopback URL, millisecond backoff."""
    settings: dict[str, Any] = {
        "base_url": server.base_url, "cache_path": cache_path, "backoff_base_s": 0.005,
        "backoff_cap_s": 0.02, "timeout_s": 5.0, "concurrency": 4, "retry_seed": 0,
    }
    settings.update(overrides)
    return settings
