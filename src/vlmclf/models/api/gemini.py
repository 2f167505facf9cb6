"""Gemini ``generateContent``: ``POST {base_url}/models/{model}:generateContent``.

The key travels in the ``x-goog-api-key`` header, never in the URL (``?key=`` would put it in
every logged URL and proxy log). The image is an ``inline_data`` part before the question.

Scoring: newer Gemini models document ``responseLogprobs`` / ``logprobs`` in generationConfig
and a ``logprobsResult`` in the candidate, but the shape and which models support it have not
been verified against the live API here, so this client treats Gemini as unable to score
lettered choices (``score_letters`` raises ScoringNotSupported).
"""

from __future__ import annotations

import urllib.parse
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

GEMINI_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
_BLOCKING_FINISH = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
                    "IMAGE_SAFETY"}


class GeminiAdapter(ProviderAdapter):
    provider = "gemini"
    default_base_url = GEMINI_BASE_URL
    can_score = False
    no_scoring_reason = ("token log-probabilities from the Gemini API are not supported by this "
                         "client (their response shape is unverified)")

    def __init__(self, model: str, base_url: str | None):
        super().__init__(model.removeprefix("models/"), base_url)

    def chat_request(self, image_b64: str, prompt: str, params: ChatParams) -> WireRequest:
        parts = [
            {"inline_data": {"mime_type": "image/png", "data": image_b64}},
            {"text": prompt},
        ]
        body = {
            "contents": [{"role": "user", "parts": parts}],
            "generationConfig": {
                "maxOutputTokens": params.max_tokens, "temperature": params.temperature,
            },
        }
        model = urllib.parse.quote(self.model, safe="-._~")
        return WireRequest("POST", self.url(f"models/{model}:generateContent"), body)

    def auth_headers(self, key: Secret | None) -> dict[str, str]:
        return {"x-goog-api-key": key.reveal()} if key is not None else {}

    def parse_answer(self, payload: Any, want_logprobs: bool) -> ParsedAnswer:
        candidates = payload.get("candidates") if isinstance(payload, dict) else None
        if not candidates:
            feedback = payload.get("promptFeedback") if isinstance(payload, dict) else None
            reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
            if reason:
                raise BlockedResponse(f"the prompt was blocked ({reason})")
            raise MalformedResponse("response has no candidates")
        candidate = candidates[0]
        if not isinstance(candidate, dict):
            raise MalformedResponse("response candidates[0] is not an object")
        content = candidate.get("content") or {}
        parts = (content.get("parts") or []) if isinstance(content, dict) else None
        if not isinstance(parts, list):
            raise MalformedResponse("response candidates[0].content.parts is not a list")
        text = "".join(
            part.get("text", "") for part in parts
            if isinstance(part, dict) and not part.get("thought")
            and isinstance(part.get("text", ""), str)
        )
        finish = candidate.get("finishReason")
        if not text.strip() and finish in _BLOCKING_FINISH:
            raise BlockedResponse(f"the answer was blocked (finishReason {finish})")
        usage = payload.get("usageMetadata")
        input_tokens, seen_in = token_count(usage, "promptTokenCount")
        # thinking tokens are billed as output
        output_tokens, seen_out = token_count(usage, "candidatesTokenCount", "thoughtsTokenCount")
        return ParsedAnswer(
            text=text, finish_reason=finish if isinstance(finish, str) else None,
            truncated=finish == "MAX_TOKENS", input_tokens=input_tokens,
            output_tokens=output_tokens, usage_reported=seen_in or seen_out,
        )

    def models_request(self) -> WireRequest:
        return WireRequest("GET", self.url("models", {"pageSize": "1000"}))

    def parse_model_list(self, payload: Any) -> list[str]:
        models = require(payload, "models")
        return [str(item["name"]).removeprefix("models/") for item in models
                if isinstance(item, dict) and "name" in item]
