"""What an API call can end in: an answer, a per-item failure, or a run-stopping error.

Per-item outcomes are values, not exceptions, so one bad example never sinks a batch:
``ApiAnswer`` is a ``str`` (methods use it as the answer text) that carries metadata, and
``ApiFailure`` is *not* a ``str``, so a method that checks ``isinstance(answer, str)`` turns it
into a failed Prediction with ``str(failure)`` as the reason. Errors that make every further
request pointless (bad key, unknown model, spent budget) are raised and stop the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

FailureKind = Literal[
    "retries_exhausted", "malformed", "empty", "http_error", "server_error", "blocked"
]


class ApiAnswer(str):
    """The text of one answer, with ``meta``: finish_reason, truncated, cached, tokens, attempts.

    ``meta["truncated"]`` is True when the provider stopped at the token limit; the text is kept.
    """

    meta: dict[str, Any]

    def __new__(cls, text: str, meta: dict[str, Any] | None = None) -> ApiAnswer:
        answer = super().__new__(cls, text)
        answer.meta = dict(meta or {})
        return answer

    def __reduce__(self):  # keep meta across pickling (process pools)
        return (ApiAnswer, (str(self), self.meta))


@dataclass(frozen=True)
class ApiFailure:
    """One request that ended without a usable answer; ``str()`` is the reason for the record."""

    reason: str
    kind: FailureKind
    attempts: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.reason


class ApiError(RuntimeError):
    """Base class of the API errors that stop a run."""


class ApiKeyMissing(ApiError):
    """No key in the provider's environment variable(s); the message names them."""


class ApiUnreachable(ApiError):
    """The server did not answer the probe sent before a run (refused, no route, timed out)."""


class ApiAuthError(ApiError):
    """The server rejected the key (HTTP 401/403). Raised at once: retrying cannot help."""


class ApiModelNotFound(ApiError):
    """The server does not serve the model; the message lists the models it does serve."""


class ScoringNotSupported(ApiError, NotImplementedError):
    """The API returns no log-probabilities, so closed-world choices cannot be scored."""


class ApiBudgetExceeded(ApiError):
    """The request or spend cap was reached. Everything answered before is already stored.

    ``results`` holds what the interrupted call got, aligned with its inputs (None: not answered).
    """

    def __init__(self, message: str, *, requests: int, max_requests: int | None,
                 cost_usd: float | None, max_cost_usd: float | None):
        super().__init__(message)
        self.requests = requests
        self.max_requests = max_requests
        self.cost_usd = cost_usd
        self.max_cost_usd = max_cost_usd
        self.results: list[Any] = []


class MalformedResponse(Exception):
    """A 200 answer that is not the JSON shape the protocol promises (retried, then a failure)."""


class BlockedResponse(Exception):
    """The provider refused to answer this item (safety filter); retrying will not change it."""


FailureOutcome = Literal["refused", "empty", "data_failure", "transient_failure"]
_FAILURE_OUTCOMES: dict[str, FailureOutcome] = {
    "blocked": "refused",  # the model's (or provider's) answer: counted, as wrong
    "empty": "empty",  # an answer with no text, truncated or not: counted, as wrong
    "http_error": "data_failure",  # a 4xx for this item (image too large, invalid): the input's
    # a 5xx, however often it repeats in this run: the server's (a flaky or broken deployment),
    # never the data's, so the next run asks again
    "server_error": "transient_failure",
    "retries_exhausted": "transient_failure",  # the server or network: retried next run
    "malformed": "transient_failure",
}


def failure_outcome(failure: ApiFailure) -> FailureOutcome:
    """What a per-item API failure means for the run: an answer that counts as wrong
    ("refused", "empty"), a failure of the input, or a transient one the next run retries."""
    return _FAILURE_OUTCOMES.get(failure.kind, "transient_failure")
