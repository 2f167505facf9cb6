"""Anthropic messages: ``POST {base_url}/messages`` with ``x-api-key`` and ``anthropic-version``.

The image goes as a base64 ``image`` block before the question; ``max_tokens`` is required.
The API returns no token log-probabilities, so it cannot score lettered choices
(``score_letters`` raises ScoringNotSupported): use generation instead.
"""

from __future__ import annotations

from typing import Any

from vlmclf.models.api.adapter import (
    ChatParams,
    ParsedAnswer,
    ProviderAdapter,
    WireRequest,
    require,
    token_count,
)
from vlmclf.models.api.errors import BlockedResponse, MalformedResponse
from vlmclf.models.api.keys import Secret

ANTHROPIC_BASE_URL = "https://api.anthropic.com/v1"
ANTHROPIC_VERSION = "2023-06-01"


class AnthropicAdapter(ProviderAdapter):
    provider = "anthropic"
    default_base_url = ANTHROPIC_BASE_URL
    can_score = False
    no_scoring_reason = "the Anthropic messages API returns no token log-probabilities"

    def chat_request(self, image_b64: str, prompt: str, params: ChatParams) -> WireRequest:
        content = [
            {"type": "image",
             "source": {"type": "base64", "media_type": "image/png", "data": image_b64}},
            {"type": "text", "text": prompt},
        ]
        body = {
            "model": self.model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "messages": [{"role": "user", "content": content}],
        }
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        return WireRequest("POST", self.url("messages"), body, headers)

    def auth_headers(self, key: Secret | None) -> dict[str, str]:
        return {"x-api-key": key.reveal()} if key is not None else {}

    def parse_answer(self, payload: Any, want_logprobs: bool) -> ParsedAnswer:
        blocks = require(payload, "content")
        if not isinstance(blocks, list):
            raise MalformedResponse("response content is not a list of blocks")
        text = "".join(
            block.get("text", "") for block in blocks
            if isinstance(block, dict) and block.get("type") == "text"
        )
        stop = payload.get("stop_reason")
        if stop == "refusal" and not text.strip():
            raise BlockedResponse("the model refused to answer (stop_reason refusal)")
        usage = payload.get("usage")
        input_tokens, seen_in = token_count(
            usage, "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"
        )
        output_tokens, seen_out = token_count(usage, "output_tokens")
        return ParsedAnswer(
            text=text, finish_reason=stop if isinstance(stop, str) else None,
            truncated=stop == "max_tokens", input_tokens=input_tokens,
            output_tokens=output_tokens, usage_reported=seen_in or seen_out,
        )

    def models_request(self) -> WireRequest:
        return WireRequest("GET", self.url("models", {"limit": "1000"}),
                           headers={"anthropic-version": ANTHROPIC_VERSION})

    def parse_model_list(self, payload: Any) -> list[str]:
        data = require(payload, "data")
        return [item["id"] for item in data if isinstance(item, dict) and "id" in item]
