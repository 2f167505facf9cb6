"""The OpenAI chat-completions wire format: reading a request, writing answers and errors.

Everything a client sends is checked here, before any image is decoded or the model is asked, and
every setting the server cannot honour is refused with a 400 naming it: a client must never get a
quietly different answer from the one it asked for (a sampled answer, two choices, a stop word).
"""

from __future__ import annotations

import base64
import binascii
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_TOKENS = 32
MAX_TOP_LOGPROBS = 20  # OpenAI's own limit
IMAGE_PLACEHOLDER = "<image>"
TEXT_ROLES = ("system", "developer", "user")


class RequestError(Exception):
    """A request the server answers with an HTTP error and an OpenAI-style error body."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str = "invalid_request_error",
        param: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param


@dataclass(frozen=True)
class ChatRequest:
    """One checked request: the image still encoded, the question, how to answer."""

    image_bytes: bytes
    question: str
    max_tokens: int
    stream: bool = False
    include_usage: bool = False
    top_logprobs: int | None = None  # None: no logprobs asked

    @property
    def wants_logprobs(self) -> bool:
        return self.top_logprobs is not None


def parse_chat_request(
    body: dict[str, Any], served_name: str, max_tokens_limit: int
) -> ChatRequest:
    """Check a chat-completions body and return what the model needs; RequestError if not."""
    if body.get("model") != served_name:
        raise RequestError(
            404,
            f"model {body.get('model')!r} does not exist; this server serves {served_name!r}",
            "model_not_found",
            "model",
        )
    _refuse_unsupported(body)
    max_tokens = _max_tokens(body, max_tokens_limit)
    top_logprobs = _top_logprobs(body, max_tokens)
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise RequestError(400, "'stream_options' must be an object", param="stream_options")
    include_usage = bool(options and options.get("include_usage"))
    image_url, question = _image_and_question(body.get("messages"))
    return ChatRequest(
        _data_url_bytes(image_url), question, max_tokens, stream, include_usage, top_logprobs
    )


# Settings a greedy single-answer server cannot honour: refused unless at their neutral value.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "temperature": (None, 0, 0.0),
    "top_p": (None, 1, 1.0),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "stop": (None, [], ""),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "response_format": (None, {"type": "text"}),
    "logit_bias": (None, {}),
    "audio": (None,),
    "modalities": (None, ["text"]),
}
_WHY = {
    "n": "this server returns exactly one choice; send n separate requests instead",
    "temperature": "this server decodes greedily (temperature 0); sampling is not offered",
    "top_p": "this server decodes greedily; nucleus sampling is not offered",
}


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for name, neutral in _NEUTRAL.items():
        value = body.get(name)
        if value is None or (not isinstance(value, bool) and value in neutral):
            continue
        why = _WHY.get(name, "this server does not support it")
        raise RequestError(400, f"{name}={value!r} is not supported: {why}", param=name)


def _max_tokens(body: dict[str, Any], limit: int) -> int:
    use_new = body.get("max_completion_tokens") is not None
    name = "max_completion_tokens" if use_new else "max_tokens"
    value = body.get(name)
    if value is None:
        return min(DEFAULT_MAX_TOKENS, limit)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(400, f"'{name}' must be a positive integer, got {value!r}", param=name)
    if value > limit:
        raise RequestError(
            400,
            f"'{name}' is {value}, over this server's limit of {limit} (--max-tokens-limit)",
            param=name,
        )
    return value


def _top_logprobs(body: dict[str, Any], max_tokens: int) -> int | None:
    if not _flag(body, "logprobs"):
        if body.get("top_logprobs") is not None:
            raise RequestError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
        return None
    value = body.get("top_logprobs", 0)
    value = 0 if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOP_LOGPROBS:
        raise RequestError(
            400,
            f"'top_logprobs' must be an integer from 0 to {MAX_TOP_LOGPROBS}, got {value!r}",
            param="top_logprobs",
        )
    if max_tokens != 1:
        raise RequestError(
            400,
            "logprobs are returned for the first answer token only: ask "
            f"with max_tokens=1 (got {max_tokens})",
            param="logprobs",
        )
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(400, f"'{name}' must be true or false, got {value!r}", param=name)
    return value


def _image_and_question(messages: Any) -> tuple[str, str]:
    """The one image URL and the text of all system and user messages, in order."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list", param="messages")
    images: list[str] = []
    texts: list[str] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise RequestError(400, f"{where} must be an object", param=where)
        role = message.get("role")
        if role not in TEXT_ROLES:
            raise RequestError(
                400,
                f"{where}: role {role!r} is not supported; this server "
                f"answers one turn of {', '.join(TEXT_ROLES)} messages",
                param=where,
            )
        for part_index, part in enumerate(_parts(message.get("content"), where)):
            kind = part.get("type")
            if kind == "text":
                texts.append(_text_of(part, f"{where}.content[{part_index}]"))
            elif kind == "image_url" and role == "user":
                images.append(_url_of(part, f"{where}.content[{part_index}]"))
            else:
                raise RequestError(
                    400,
                    f"{where}.content[{part_index}]: part type {kind!r} is not "
                    f"supported in a {role} message",
                    param=where,
                )
    if len(images) != 1:
        raise RequestError(
            400,
            f"this server needs exactly one image per request, got {len(images)}",
            param="messages",
        )
    question = "\n".join(text.strip() for text in texts if text.strip())
    if IMAGE_PLACEHOLDER in question:
        raise RequestError(
            400,
            f"the text may not contain {IMAGE_PLACEHOLDER!r}: send the image "
            "as an image_url part and the model places it itself",
            param="messages",
        )
    return images[0], question


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(p, dict) for p in content):
        raise RequestError(400, f"{where}.content must be a string or a list of parts", param=where)
    return content


def _text_of(part: dict[str, Any], where: str) -> str:
    text = part.get("text")
    if not isinstance(text, str):
        raise RequestError(400, f"{where}: a text part needs a string 'text'", param=where)
    return text


def _url_of(part: dict[str, Any], where: str) -> str:
    """``{"image_url": {"url": ...}}``, or the bare string some clients send."""
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        raise RequestError(
            400, f"{where}: 'image_url' must be a URL string or {{\"url\": ...}}", param=where
        )
    return url


_DATA_URL = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.IGNORECASE)


def _data_url_bytes(url: str) -> bytes:
    if not _DATA_URL.match(url):
        shown = url[:40] + ("..." if len(url) > 40 else "")
        raise RequestError(
            400,
            "images must be sent as data:image/<type>;base64,<data> URLs "
            f"(this server fetches nothing), got {shown!r}",
            param="messages",
        )
    try:
        return base64.b64decode(url.split(",", 1)[1], validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(
            400, f"the image's base64 data is invalid: {err}", param="messages"
        ) from err


# ------------------------------------------------------------------------------ answers


@dataclass(frozen=True)
class Answer:
    """What the model produced for one request."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    first_token: tuple[str, float] | None = None  # (token, logprob) when logprobs were asked
    top_logprobs: list[tuple[str, float]] | None = None


def completion_body(answer: Answer, served_name: str) -> dict[str, Any]:
    """A ``chat.completion`` object."""
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": answer.text},
        "finish_reason": answer.finish_reason,
        "logprobs": _logprobs(answer),
    }
    return {
        **_envelope("chat.completion", served_name),
        "choices": [choice],
        "usage": usage_body(answer),
    }


class ChunkStream:
    """The ``chat.completion.chunk`` events of one answer, in the order OpenAI sends them: a role
    chunk, text chunks (sent as tokens are decoded, or all at the end), a finish chunk, and a
    usage chunk when ``stream_options.include_usage`` asked for one. All share one id."""

    def __init__(self, served_name: str, include_usage: bool):
        self.envelope = _envelope("chat.completion.chunk", served_name)
        self.include_usage = include_usage

    def _chunk(
        self,
        delta: dict[str, Any],
        finish: str | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
        usage: dict[str, Any] = {"usage": None} if self.include_usage else {}
        return {**self.envelope, "choices": [choice], **usage}

    def opening(self) -> dict[str, Any]:
        return self._chunk({"role": "assistant", "content": ""})

    def text(self, piece: str) -> dict[str, Any]:
        return self._chunk({"content": piece})

    def whole(self, answer: Answer) -> list[dict[str, Any]]:
        """The text chunks of an answer generated in one piece: one per word."""
        pieces = re.findall(r"\s*\S+", answer.text) or []
        chunks = [
            self._chunk({"content": piece}, logprobs=_logprobs(answer) if index == 0 else None)
            for index, piece in enumerate(pieces)
        ]
        if not pieces and answer.first_token is not None:
            chunks.append(self._chunk({"content": ""}, logprobs=_logprobs(answer)))
        return chunks

    def closing(self, answer: Answer) -> list[dict[str, Any]]:
        chunks = [self._chunk({}, answer.finish_reason)]
        if self.include_usage:
            chunks.append({**self.envelope, "choices": [], "usage": usage_body(answer)})
        return chunks


def stream_chunks(answer: Answer, served_name: str, include_usage: bool) -> list[dict[str, Any]]:
    """All chunk events of an answer generated in one piece."""
    stream = ChunkStream(served_name, include_usage)
    return [stream.opening(), *stream.whole(answer), *stream.closing(answer)]


def usage_body(answer: Answer) -> dict[str, int]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }


def _logprobs(answer: Answer) -> dict[str, Any] | None:
    if answer.first_token is None:
        return None
    token, logprob = answer.first_token
    top = [_token_entry(t, lp) for t, lp in answer.top_logprobs or []]
    return {"content": [{**_token_entry(token, logprob), "top_logprobs": top}], "refusal": None}


def _token_entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def _envelope(kind: str, served_name: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": kind,
        "created": int(time.time()),
        "model": served_name,
    }


def model_object(served_name: str) -> dict[str, Any]:
    return {"id": served_name, "object": "model", "created": 0, "owned_by": "vlmclf"}


def error_body(message: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _error_type(code), "param": param, "code": code}}


def _error_type(code: str) -> str:
    if code in ("invalid_api_key",):
        return "authentication_error"
    if code in ("server_error", "model_failed", "server_busy"):
        return "server_error"
    return "invalid_request_error"
