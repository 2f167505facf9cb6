"""``load_api_model("openai:gpt-4o", ...)``: spec string and settings to a ready ApiChatModel."""

from __future__ import annotations

from pathlib import Path

from vlmclf.models.api.adapter import ProviderAdapter
from vlmclf.models.api.anthropic import AnthropicAdapter
from vlmclf.models.api.base import ApiChatModel
from vlmclf.models.api.cache import ResponseCache, default_cache_path
from vlmclf.models.api.errors import ApiUnreachable
from vlmclf.models.api.gemini import GeminiAdapter
from vlmclf.models.api.keys import find_key, strip_credentials
from vlmclf.models.api.openai import OpenAIAdapter
from vlmclf.models.api.prices import PriceTable
from vlmclf.models.api.transport import RetryPolicy, send

ADAPTERS: dict[str, type[ProviderAdapter]] = {
    "openai": OpenAIAdapter,
    "anthropic": AnthropicAdapter,
    "gemini": GeminiAdapter,
}
API_PREFIXES = tuple(f"{name}:" for name in ADAPTERS)
PROBE_TIMEOUT_S = 5.0
"""How long the probe before a run waits for the server: a run's requests wait 60 s, retried."""


def parse_api_spec(spec: str) -> tuple[str, str]:
    """``"openai:gpt-4o"`` -> ``("openai", "gpt-4o")``, or a ValueError that says what is wrong."""
    provider, sep, model = spec.partition(":")
    if not sep or provider not in ADAPTERS:
        raise ValueError(f"model spec {spec!r} is not an API model: expected one of "
                         + ", ".join(f"{prefix}<model>" for prefix in API_PREFIXES))
    if not model.strip():
        raise ValueError(f"model spec {spec!r} names no model after {provider}:")
    return provider, model.strip()


def load_api_model(spec: str, *, base_url: str | None = None, concurrency: int = 4,
                   max_requests: int | None = None, max_cost_usd: float | None = None,
                   timeout_s: float = 60, max_retries: int = 6, image_max_side: int | None = None,
                   cache_path: str | Path | None = None, price_file: str | None = None,
                   temperature: float = 0.0, backoff_base_s: float = 1.0,
                   backoff_cap_s: float = 60.0, max_retry_after_s: float = 300.0,
                   top_logprobs: int = 20, retry_seed: int | None = None) -> ApiChatModel:
    """Build the client for ``openai:<model>``, ``anthropic:<model>`` or ``gemini:<model>``.

    The key comes from OPENAI_API_KEY, ANTHROPIC_API_KEY or GEMINI_API_KEY (else
    GOOGLE_API_KEY); a missing key is an error naming the variable, except for an OpenAI-
    compatible ``base_url`` other than api.openai.com, which is sent no Authorization header.
    ``base_url`` replaces the provider's endpoint root for all three kinds (e.g.
    ``http://localhost:8000/v1`` for vLLM). Answers are cached in ``cache_path`` (default
    ``$VLMCLF_API_CACHE`` or ~/.cache/vlmclf/api_responses.sqlite).
    """
    provider, model = parse_api_spec(spec)
    if max_retries < 0:
        raise ValueError(f"max_retries must be at least 0, got {max_retries}")
    adapter = ADAPTERS[provider](model, base_url)
    key = find_key(provider, key_optional=adapter.key_optional)
    retry = RetryPolicy(max_retries=max_retries, base_s=backoff_base_s, cap_s=backoff_cap_s,
                        max_retry_after_s=max_retry_after_s, seed=retry_seed)
    prices = PriceTable.load(price_file)
    cache = ResponseCache(cache_path if cache_path is not None else default_cache_path())
    try:
        return ApiChatModel(
            adapter, key, name=f"{provider}:{adapter.model}", cache=cache, prices=prices,
            concurrency=concurrency, max_requests=max_requests, max_cost_usd=max_cost_usd,
            timeout_s=timeout_s, retry=retry, image_max_side=image_max_side,
            temperature=temperature, top_logprobs=top_logprobs,
        )
    except BaseException:
        cache.close()
        raise


def check_api_model(spec: str, base_url: str | None = None,
                    probe_timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """What can be known before any work: the spec names a provider and a model, its key is
    set (unless an OpenAI-compatible server needs none), and the server answers one request
    without the key (any HTTP status will do: only no answer at all is an error).
    Raises ValueError, ApiKeyMissing or ApiUnreachable, each one line."""
    provider, model = parse_api_spec(spec)
    adapter = ADAPTERS[provider](model, base_url)
    find_key(provider, key_optional=adapter.key_optional)
    answer = send("GET", adapter.base_url, {}, None, probe_timeout_s)
    if answer.status == 0:
        raise ApiUnreachable(f"{spec}: the server at {strip_credentials(adapter.base_url)} does "
                             f"not answer ({answer.error}); is it running, and is --base-url "
                             "right?")
