"""API models: ``openai:<model>`` (and any OpenAI-compatible server), ``anthropic:<model>``,
``gemini:<model>``.

Only OpenAI-compatible servers that return ``logprobs`` can score lettered choices
(``score_letters``); the Anthropic API returns no log-probabilities and Gemini's are not used
(unverified shape), so both raise ScoringNotSupported there and support generation only.
"""

from vlmclf.models.api.base import ApiChatModel
from vlmclf.models.api.errors import (
    ApiAnswer,
    ApiAuthError,
    ApiBudgetExceeded,
    ApiError,
    ApiFailure,
    ApiKeyMissing,
    ApiModelNotFound,
    ScoringNotSupported,
)
from vlmclf.models.api.loader import API_PREFIXES, load_api_model, parse_api_spec
from vlmclf.models.api.prices import DEFAULT_PRICES, PriceTable

__all__ = [
    "API_PREFIXES",
    "DEFAULT_PRICES",
    "ApiAnswer",
    "ApiAuthError",
    "ApiBudgetExceeded",
    "ApiChatModel",
    "ApiError",
    "ApiFailure",
    "ApiKeyMissing",
    "ApiModelNotFound",
    "PriceTable",
    "ScoringNotSupported",
    "load_api_model",
    "parse_api_spec",
]
