"""OpenAI chat completions, and every server that speaks it (vLLM, llama.cpp, Ollama, SGLang).

``POST {base_url}/chat/completions`` with ``Authorization: Bearer <key>``; the image goes as a
``data:image/png;base64,...`` URL. This is the one protocol that can score lettered choices: with
``logprobs: true, top_logprobs: N`` it returns the log-probabilities of the N likeliest first
tokens. A server other than api.openai.com may need no key: with OPENAI_API_KEY unset we send no
Authorization header at all.
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
from vlmclf.models.api.errors import BlockedResponse, MalformedResponse, ScoringNotSupported
from vlmclf.models.api.keys import Secret, strip_credentials

OPENAI_BASE_URL = "https://api.openai.com/v1"


class OpenAIAdapter(ProviderAdapter):
    provider = "openai"
    default_base_url = OPENAI_BASE_URL
    can_score = True

    @property
    def key_optional(self) -> bool:
        return urllib.parse.urlsplit(self.base_url).hostname != "api.openai.com"

    def chat_request(self, image_b64: str, prompt: str, params: ChatParams) -> WireRequest:
        content = [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image_b64}"}},
            {"type": "text", "text": prompt},
        ]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
        }
        if params.top_logprobs is not None:
            body["logprobs"] = True
            body["top_logprobs"] = params.top_logprobs
        return WireRequest("POST", self.url("chat/completions"), body)

    def auth_headers(self, key: Secret | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key.reveal()}"} if key is not None else {}

    def parse_answer(self, payload: Any, want_logprobs: bool) -> ParsedAnswer:
        choice = require(payload, "choices", 0)
        message = require(choice, "message")
        if not isinstance(message, dict):
            raise MalformedResponse("response choices[0].message is not an object")
        text = _message_text(message.get("content"))
        finish = choice.get("finish_reason")
        refusal = message.get("refusal")
        if not text.strip() and isinstance(refusal, str) and refusal.strip():
            raise BlockedResponse(f"the model refused: {refusal.strip()[:200]}")
        if not text.strip() and finish == "content_filter":
            raise BlockedResponse("the answer was withheld by the content filter")
        usage = payload.get("usage")
        input_tokens, seen_in = token_count(usage, "prompt_tokens")
        output_tokens, seen_out = token_count(usage, "completion_tokens")
        top = self._first_token_logprobs(choice) if want_logprobs else None
        return ParsedAnswer(
            text=text, finish_reason=finish if isinstance(finish, str) else None,
            truncated=finish == "length", input_tokens=input_tokens,
            output_tokens=output_tokens, usage_reported=seen_in or seen_out, top_logprobs=top,
        )

    def _first_token_logprobs(self, choice: dict[str, Any]) -> list[tuple[str, float]]:
        logprobs = choice.get("logprobs")
        content = logprobs.get("content") if isinstance(logprobs, dict) else None
        if not content:
            raise ScoringNotSupported(
                f"{strip_credentials(self.base_url)} returned no logprobs for {self.model}, so "
                "lettered choices cannot be scored (vLLM needs --max-logprobs at least "
                "top_logprobs; many OpenAI-compatible servers do not return them at all)"
            )
        first = content[0]
        entries = first.get("top_logprobs") if isinstance(first, dict) else None
        if not isinstance(entries, list):
            raise MalformedResponse("response logprobs.content[0] has no top_logprobs list")
        pairs: list[tuple[str, float]] = []
        for entry in entries:
            token = entry.get("token") if isinstance(entry, dict) else None
            logprob = entry.get("logprob") if isinstance(entry, dict) else None
            if not isinstance(token, str) or not isinstance(logprob, int | float):
                raise MalformedResponse("a top_logprobs entry lacks token or logprob")
            pairs.append((token, float(logprob)))
        return pairs

    def models_request(self) -> WireRequest:
        return WireRequest("GET", self.url("models"))

    def parse_model_list(self, payload: Any) -> list[str]:
        data = require(payload, "data")
        return [item["id"] for item in data if isinstance(item, dict) and "id" in item]


def _message_text(content: Any) -> str:
    """Content is a string, null, or (some compatible servers) a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") for part in content
            if isinstance(part, dict) and isinstance(part.get("text", ""), str)
        )
    raise MalformedResponse("response message.content is neither text nor a list of parts")
