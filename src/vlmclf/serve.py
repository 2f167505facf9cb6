"""An OpenAI-compatible chat server in front of any vlmclf model.

It lets the API path (``openai:<name> --base-url``) be exercised against a real model over real
HTTP, and lets a model be shared by several evaluation processes. One request is one image and
one question; requests are answered one at a time (the model is not thread-safe), so this is a
tool for local use and tests, not a production server (use vLLM or SGLang for that).
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

MAX_BODY_BYTES = 64 * 1024 * 1024


class RequestError(Exception):
    """A request the server answers with an HTTP error and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, code: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.code = code


def parse_chat_request(body: dict[str, Any]) -> tuple[Image.Image, str, int]:
    """The image, the question and the token budget of a chat-completions request."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list")
    content = messages[-1].get("content") if isinstance(messages[-1], dict) else None
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(parts, list):
        raise RequestError(400, "the last message's 'content' must be a string or a list")
    images = [
        _decode_image(p) for p in parts if isinstance(p, dict) and p.get("type") == "image_url"
    ]
    text = " ".join(
        p.get("text", "") for p in parts if isinstance(p, dict) and p.get("type") == "text"
    )
    if len(images) != 1:
        raise RequestError(
            400, f"this server needs exactly one image per request, got {len(images)}"
        )
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 32
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError(400, "'max_tokens' must be a positive integer")
    return images[0], text.strip(), max_tokens


def _decode_image(part: dict[str, Any]) -> Image.Image:
    url = (part.get("image_url") or {}).get("url", "")
    if not url.startswith("data:") or ";base64," not in url:
        raise RequestError(400, "images must be sent as data:<mime>;base64,<data> URLs")
    try:
        data = base64.b64decode(url.split(";base64,", 1)[1], validate=True)
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as err:
        raise RequestError(400, f"the image could not be decoded: {err}") from err
    return image.convert("RGB")


class ChatModelServer:
    """Serves ``model`` under ``served_name`` at ``http://host:port/v1``."""

    def __init__(self, model: Any, served_name: str, host: str = "127.0.0.1", port: int = 8000):
        self.model = model
        self.served_name = served_name
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), self._handler_class())

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def start_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        thread.start()
        return thread

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def models_payload(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": self.served_name, "object": "model", "owned_by": "vlmclf"}],
        }

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """Answer one chat-completions request body."""
        if body.get("model") != self.served_name:
            raise RequestError(
                404, f"model {body.get('model')!r} does not exist", "model_not_found"
            )
        image, question, max_tokens = parse_chat_request(body)
        with self._lock:
            (answer,) = self.model.generate([image], [question], max_tokens)
            prompt_tokens = self._count(lambda: self.model.prompt_length(question))
            completion_tokens = self._count(lambda: len(self.model.tokenizer(answer)["input_ids"]))
        finish = (
            "length"
            if completion_tokens is not None and completion_tokens >= max_tokens
            else "stop"
        )
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.served_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens or 0,
                "completion_tokens": completion_tokens or 0,
                "total_tokens": (prompt_tokens or 0) + (completion_tokens or 0),
            },
        }

    @staticmethod
    def _count(measure: Callable[[], int]) -> int | None:
        try:
            return int(measure())
        except Exception:  # a model without a tokenizer (an API model behind us) has no counts
            return None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, server.models_payload())
                else:
                    self._send(404, _error(f"no route {self.path}", "not_found"))

            def do_POST(self) -> None:
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, _error(f"no route {self.path}", "not_found"))
                    return
                try:
                    self._send(200, server.complete(self._read_json()))
                except RequestError as err:
                    self._send(err.status, _error(str(err), err.code))

            def _read_json(self) -> dict[str, Any]:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    raise RequestError(413, f"request body over {MAX_BODY_BYTES} bytes")
                try:
                    body = json.loads(self.rfile.read(length))
                except json.JSONDecodeError as err:
                    raise RequestError(400, f"the body is not JSON: {err}") from err
                if not isinstance(body, dict):
                    raise RequestError(400, "the body must be a JSON object")
                return body

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
                pass  # requests are not logged: they may carry credentials in headers

        return Handler


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": code, "code": code}}
