"""What differs between the protocols, behind one small interface.

An adapter builds the wire request for (image, prompt, parameters), reads an answer out of the
response JSON and knows its server's error and model-list shapes. Everything else (retries,
concurrency, caching, accounting, keys) is shared and lives in ``base.py``.
"""

from __future__ import annotations

import urllib.parse
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from vlmclf.models.api.errors import MalformedResponse
from vlmclf.models.api.keys import Secret


@dataclass(frozen=True)
class WireRequest:
    """One HTTP request, without the key (added by the client at send time)."""

    method: str
    url: str
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ParsedAnswer:
    """The parts of a response we keep: this is what the response cache stores."""

    text: str
    finish_reason: str | None
    truncated: bool
    input_tokens: int
    output_tokens: int
    usage_reported: bool = True
    top_logprobs: list[tuple[str, float]] | None = None

    def to_cache(self) -> dict[str, Any]:
        value = {
            "text": self.text, "finish_reason": self.finish_reason, "truncated": self.truncated,
            "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
        }
        if self.top_logprobs is not None:
            value["top_logprobs"] = [[token, logprob] for token, logprob in self.top_logprobs]
        return value


@dataclass(frozen=True)
class ChatParams:
    """Generation parameters; all of them go into the cache key."""

    max_tokens: int
    temperature: float
    top_logprobs: int | None = None  # set only when scoring

    def as_key(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "temperature": self.temperature,
                "top_logprobs": self.top_logprobs}


class ProviderAdapter(ABC):
    """The request/response mapping of one API protocol."""

    provider: ClassVar[str]
    default_base_url: ClassVar[str]
    can_score: ClassVar[bool] = False
    no_scoring_reason: ClassVar[str] = "this API returns no token log-probabilities"

    def __init__(self, model: str, base_url: str | None):
        self.model = model
        self.base_url = (base_url or self.default_base_url).rstrip("/")

    @property
    def key_optional(self) -> bool:
        """Whether a missing key is allowed (OpenAI-compatible servers other than OpenAI)."""
        return False

    @abstractmethod
    def chat_request(self, image_b64: str, prompt: str, params: ChatParams) -> WireRequest: ...

    @abstractmethod
    def auth_headers(self, key: Secret | None) -> dict[str, str]: ...

    @abstractmethod
    def parse_answer(self, payload: Any, want_logprobs: bool) -> ParsedAnswer:
        """Read the answer; raise MalformedResponse, BlockedResponse or ScoringNotSupported."""

    @abstractmethod
    def models_request(self) -> WireRequest: ...

    @abstractmethod
    def parse_model_list(self, payload: Any) -> list[str]: ...

    def same_model(self, listed: str) -> bool:
        return listed == self.model

    def is_model_not_found(self, status: int, payload: Any) -> bool:
        """404, or an error whose code says so (OpenAI sends ``model_not_found``)."""
        if status == 404:
            return True
        error = payload.get("error") if isinstance(payload, dict) else None
        return isinstance(error, dict) and error.get("code") == "model_not_found"

    def url(self, path: str, query: dict[str, str] | None = None) -> str:
        suffix = f"?{urllib.parse.urlencode(query)}" if query else ""
        return f"{self.base_url}/{path.lstrip('/')}{suffix}"


def error_message(payload: Any, fallback: str) -> str:
    """The human part of an error body in any of the three shapes (and vLLM's)."""
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
        for name in ("message", "detail"):
            if isinstance(payload.get(name), str):
                return payload[name]
    return fallback


def require(payload: Any, *path: str | int) -> Any:
    """``payload[path[0]][path[1]]...``, or MalformedResponse naming the missing step."""
    node = payload
    walked = ""
    for step in path:
        walked += f"[{step!r}]"
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError) as err:
            raise MalformedResponse(f"response has no {walked}") from err
    return node


def token_count(usage: Any, *names: str) -> tuple[int, bool]:
    """Sum of the named integer fields of a usage object, and whether any was present."""
    if not isinstance(usage, dict):
        return 0, False
    total, seen = 0, False
    for name in names:
        value = usage.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            total += value
            seen = True
    return total, seen
