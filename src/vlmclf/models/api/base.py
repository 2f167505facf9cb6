"""ApiChatModel: one remote chat model behind the ChatAPI protocol, answered with care.

The shared machinery of all three protocols: requests sent concurrently, retried with backoff,
every answer written to the response cache the moment it arrives, usage and cost counted once,
caps enforced, keys kept out of everything written down.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image

from vlmclf.models.api.accounting import Usage
from vlmclf.models.api.adapter import ChatParams, ParsedAnswer, ProviderAdapter, error_message
from vlmclf.models.api.cache import ResponseCache, cache_key
from vlmclf.models.api.encoding import encode_png, letter_logprobs
from vlmclf.models.api.errors import (
    ApiAnswer,
    ApiAuthError,
    ApiError,
    ApiFailure,
    ApiModelNotFound,
    BlockedResponse,
    MalformedResponse,
    ScoringNotSupported,
    failure_outcome,
)
from vlmclf.models.api.keys import KEY_VARIABLES, Secret, logger, redact, strip_credentials
from vlmclf.models.api.prices import PriceTable
from vlmclf.models.api.transport import (
    AUTH_STATUS,
    RETRYABLE_STATUS,
    HttpResult,
    RetryPolicy,
    retry_after_seconds,
    send,
)

_NOT_SENT = object()  # the run stopped before this item was sent


@dataclass(frozen=True)
class _Job:
    key: str
    image_b64: str
    prompt: str


@dataclass(frozen=True)
class _Retry:
    reason: str
    retry_after: float | None = None
    malformed: bool = False
    repeatable: tuple[int, bytes] | None = None  # (status, body) of an error that may be fixed


# A 500 with the same body twice in a row is not retried five more times in this run (that only
# multiplies requests), but it stays the server's fault: a transient failure the next run
# retries. 429/502/503/504 are load and gateway states whose bodies repeat while they pass, so
# they keep the normal retries.
DETERMINISTIC_STATUS = frozenset({500})


class ApiChatModel:
    """A remote chat model (OpenAI-compatible, Anthropic or Gemini) as a ChatAPI.

    ``generate`` returns one item per input, in order: an ``ApiAnswer`` (a ``str`` whose
    ``.meta`` says finish_reason, truncated, cached, tokens, attempts) or an ``ApiFailure`` (not
    a ``str``; ``str(failure)`` is the reason: retries exhausted, malformed response, empty
    answer, blocked, HTTP error). One failed item never fails the batch. Run-stopping problems
    are raised after every in-flight answer has been stored: ApiAuthError (401/403, no retry),
    ApiModelNotFound, ApiBudgetExceeded, ScoringNotSupported; each carries ``.results``, the
    batch's outcomes so far (None where nothing was answered).

    Requests run ``concurrency`` at a time within one call, so pass batches of at least that
    size. Identical (image, prompt) items in a batch share one request.
    """

    def __init__(self, adapter: ProviderAdapter, key: Secret | None, *, name: str,
                 cache: ResponseCache, prices: PriceTable, concurrency: int = 4,
                 max_requests: int | None = None, max_cost_usd: float | None = None,
                 timeout_s: float = 60.0, retry: RetryPolicy | None = None,
                 image_max_side: int | None = None, temperature: float = 0.0,
                 top_logprobs: int = 20):
        _check_settings(concurrency, max_requests, max_cost_usd, timeout_s, image_max_side,
                        top_logprobs)
        self.name = name
        self.provider = adapter.provider
        self.model = adapter.model
        self.base_url = strip_credentials(adapter.base_url)
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.image_max_side = image_max_side
        self.temperature = temperature
        self.top_logprobs = top_logprobs
        self._adapter = adapter
        self._key = key
        self._cache = cache
        price = prices.lookup(self.model)
        if max_cost_usd is not None and price is None:
            raise ValueError(f"max_cost_usd needs a price for {self.model}, and the price table "
                             "has none: add it with --price-file (a JSON file of USD per 1M "
                             'tokens, e.g. {"my-model": {"input": 0.1, "output": 0.2}}) or drop '
                             "the spend cap")
        self._usage = Usage(price=price, max_requests=max_requests, max_cost_usd=max_cost_usd)
        self._rng = random.Random(self.retry.seed)
        self._served_lock = threading.Lock()
        self._served_checked = False
        self._not_served: ApiModelNotFound | None = None
        self._warned_input_tokens = False

    def __repr__(self) -> str:
        return f"ApiChatModel({self.name!r}, base_url={self.base_url!r})"

    # ----- public API -------------------------------------------------------------------

    def generate(self, images: list[Image.Image], questions: list[str],
                 max_new_tokens: int) -> list[ApiAnswer | ApiFailure]:
        """One answer (or ApiFailure) per (image, question), with the same prompts as local VLMs."""
        params = ChatParams(max_tokens=max_new_tokens, temperature=self.temperature)
        return self._run_batch(images, questions, params, "generate", self._to_answer)

    def score_letters(self, images: list[Image.Image], questions: list[str],
                      letters: Sequence[str]) -> list[dict[str, float | None] | ApiFailure]:
        """Log-probability of each letter as the first answer token, per (image, question).

        A letter outside the server's top ``top_logprobs`` tokens gets None. Raises
        ScoringNotSupported for APIs without log-probabilities (Anthropic, Gemini).
        """
        if not self._adapter.can_score:
            raise ScoringNotSupported(
                f"{self.name} cannot score lettered choices: {self._adapter.no_scoring_reason}. "
                "Use generation (open or closed world) with this model instead."
            )
        if not letters or len(set(letters)) != len(letters):
            raise ValueError(f"letters must be distinct and non-empty, got {list(letters)!r}")
        params = ChatParams(max_tokens=1, temperature=self.temperature,
                            top_logprobs=self.top_logprobs)

        def to_scores(value: dict[str, Any]) -> dict[str, float | None]:
            return letter_logprobs(value["top_logprobs"], letters)

        return self._run_batch(images, questions, params, "score", to_scores)

    def usage(self) -> dict[str, Any]:
        """Counts and estimated cost of this run (see ``Usage``); cost None when unpriced."""
        return {"provider": self.provider, "model": self.model, "base_url": self.base_url,
                **self._usage.as_dict()}

    def close(self) -> None:
        self._cache.close()

    # ----- one batch --------------------------------------------------------------------

    def _run_batch(self, images: list[Image.Image], questions: list[str], params: ChatParams,
                   mode: str, finish: Callable[[dict[str, Any]], Any]) -> list[Any]:
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        jobs = [self._job(image, question, params, mode) for image, question in zip(
            images, questions, strict=True)]
        found = self._cache.get_many([job.key for job in jobs])
        values: dict[str, Any] = {
            key: {**value, "cached": True, "attempts": 0} for key, value in found.items()
        }
        pending = list({job.key: job for job in jobs if job.key not in found}.values())
        self._usage.add(cached_hits=len(jobs) - len(pending))
        fatal = self._fetch_all(pending, params, mode, values)
        outcomes = [_finish(values.get(job.key), finish) for job in jobs]
        if fatal is not None:
            fatal.results = outcomes  # type: ignore[attr-defined]
            raise fatal
        return outcomes

    def _job(self, image: Image.Image, prompt: str, params: ChatParams, mode: str) -> _Job:
        png = encode_png(image, self.image_max_side)
        digest = hashlib.sha256(png).hexdigest()
        key = cache_key(self.provider, self.model, self.base_url, digest, prompt,
                        {**params.as_key(), "mode": mode})
        return _Job(key, base64.b64encode(png).decode("ascii"), prompt)

    def _fetch_all(self, pending: list[_Job], params: ChatParams, mode: str,
                   values: dict[str, Any]) -> Exception | None:
        """Send the pending jobs concurrently; the first run-stopping error, if any."""
        if not pending:
            return None
        stop = threading.Event()
        fatal: Exception | None = None
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(pending)),
                                  thread_name_prefix="vlmclf-api")
        futures = {pool.submit(self._fetch_or_stop, job, params, mode, stop): job
                   for job in pending}
        try:
            for future in as_completed(futures):
                try:
                    outcome = future.result()
                except Exception as err:  # noqa: BLE001 - every worker error stops the run
                    fatal = fatal or err
                    stop.set()
                    continue
                if outcome is not _NOT_SENT:
                    values[futures[future].key] = outcome
        except BaseException:  # Ctrl-C: stop sending; answers in flight are still stored
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return fatal

    # ----- one request, with retries ----------------------------------------------------

    def _fetch_or_stop(self, job: _Job, params: ChatParams, mode: str,
                       stop: threading.Event) -> Any:
        """``_fetch``, stopping every other worker at once when it raises."""
        try:
            return self._fetch(job, params, mode, stop)
        except BaseException:
            stop.set()
            raise

    def _fetch(self, job: _Job, params: ChatParams, mode: str, stop: threading.Event) -> Any:
        request = self._adapter.chat_request(job.image_b64, job.prompt, params)
        body = json.dumps(request.body).encode("utf-8")
        headers = {**self._base_headers(), **request.headers,
                   **self._adapter.auth_headers(self._key)}
        safe_url = strip_credentials(request.url)
        attempts = 0
        previous_error: tuple[int, bytes] | None = None
        while not stop.is_set():
            self._usage.reserve_request(self._cache.path)
            attempts += 1
            logger.debug("%s: POST %s (attempt %d, item %s)", self.name, safe_url, attempts,
                         job.key[:12])
            result = send("POST", request.url, headers, body, self.timeout_s)
            verdict = self._judge(result, want_logprobs=mode == "score")
            if isinstance(verdict, ParsedAnswer):
                return self._accept(job, verdict, mode, attempts)
            if isinstance(verdict, ApiFailure):
                return self._fail(replace(verdict, attempts=attempts))
            if verdict.repeatable is not None and verdict.repeatable == previous_error:
                return self._fail(ApiFailure(
                    f"{verdict.reason} (the same error twice in a row: not retried further in "
                    "this run; a server error, so the next run asks again)", "server_error",
                    attempts))
            previous_error = verdict.repeatable
            delay_or_failure = self._retry_delay(verdict, attempts)
            if isinstance(delay_or_failure, ApiFailure):
                return self._fail(delay_or_failure)
            self._usage.add(retries=1)
            logger.info("%s: %s; retry %d of %d in %.2f s", self.name, verdict.reason,
                        attempts, self.retry.max_retries, delay_or_failure)
            if stop.wait(delay_or_failure):
                break
        return _NOT_SENT

    def _base_headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", "Accept": "application/json",
                "User-Agent": "vlmclf"}

    def _judge(self, result: HttpResult, want_logprobs: bool) -> ParsedAnswer | ApiFailure | _Retry:
        """What one HTTP exchange means: an answer, a final failure, or a reason to retry."""
        if result.status == 0:
            return _Retry(redact(result.error or "no response"))
        if result.status in AUTH_STATUS:
            raise self._auth_error(result)
        if 200 <= result.status < 300:
            return self._parse(result, want_logprobs)
        payload = _json_or_none(result.body)
        message = _server_message(result, payload)
        if result.status in RETRYABLE_STATUS:
            after = retry_after_seconds(result.headers)
            repeatable = (result.status, result.body) if (
                result.status in DETERMINISTIC_STATUS and after is None) else None
            return _Retry(f"HTTP {result.status}: {message}", after, repeatable=repeatable)
        if self._adapter.is_model_not_found(result.status, payload):
            self._ensure_model_served()
        kind = "server_error" if result.status >= 500 else "http_error"  # 5xx: never the data's
        return ApiFailure(f"HTTP {result.status} from {self.base_url}: {message}", kind)

    def _parse(self, result: HttpResult, want_logprobs: bool) -> ParsedAnswer | ApiFailure | _Retry:
        try:
            return self._adapter.parse_answer(result.json(), want_logprobs)
        except BlockedResponse as err:
            return ApiFailure(redact(str(err)), "blocked")
        except (ValueError, MalformedResponse, AttributeError, TypeError, KeyError) as err:
            self._usage.add(malformed=1)
            detail = str(err)[:200] if isinstance(err, MalformedResponse) else type(err).__name__
            return _Retry(redact(f"malformed response ({detail})"), malformed=True)

    def _retry_delay(self, verdict: _Retry, attempts: int) -> float | ApiFailure:
        policy = self.retry
        kind = "malformed" if verdict.malformed else "retries_exhausted"
        if attempts > policy.max_retries:
            return ApiFailure(f"gave up after {attempts} attempts: {verdict.reason}", kind,
                              attempts)
        if verdict.retry_after is None:
            return policy.backoff(attempts - 1, self._rng)
        if verdict.retry_after > policy.max_retry_after_s:
            return ApiFailure(
                f"server asked to wait {verdict.retry_after:.0f} s (more than "
                f"max_retry_after_s={policy.max_retry_after_s:g}): {verdict.reason}", kind,
                attempts)
        # a little jitter on top, so workers told the same Retry-After do not stampede
        return verdict.retry_after * (1.0 + 0.1 * self._rng.random())

    def _accept(self, job: _Job, parsed: ParsedAnswer, mode: str, attempts: int) -> Any:
        self._usage.add(input_tokens=parsed.input_tokens, output_tokens=parsed.output_tokens,
                        truncated=int(parsed.truncated and mode == "generate"),
                        responses_without_usage=int(not parsed.usage_reported))
        self._check_input_tokens(job, parsed)
        if mode == "generate" and not parsed.text.strip():
            why = ": the token limit was reached before any text" if parsed.truncated else ""
            return self._fail(ApiFailure(
                f"empty answer (finish_reason {parsed.finish_reason}){why}", "empty", attempts))
        value = parsed.to_cache()
        self._cache.put(job.key, self.provider, self.model, value)
        self._usage.add(answered=1)
        logger.debug("%s: item %s answered after %d attempt(s), %d+%d tokens", self.name,
                     job.key[:12], attempts, parsed.input_tokens, parsed.output_tokens)
        return {**value, "cached": False, "attempts": attempts}

    def _check_input_tokens(self, job: _Job, parsed: ParsedAnswer) -> None:
        """Warn (once per model) when the server counts fewer input tokens than the request has.

        Every word of the question is at least one token and the image at least one more, so a
        count below that means the server dropped the image or the question (a chat template
        that ignores image parts does this silently, and the answers are then guesses).
        """
        floor = len(job.prompt.split()) + 1
        if not parsed.usage_reported or parsed.input_tokens >= floor:
            return
        self._usage.add(implausible_input_tokens=1)
        with self._served_lock:
            if self._warned_input_tokens:
                return
            self._warned_input_tokens = True
        logger.warning(
            "%s: the server reports %d input tokens for a request with an image and a %d-word "
            "question (at least %d expected): it may be dropping the image or the question; "
            "check its chat template and image support", self.name, parsed.input_tokens,
            floor - 1, floor)

    def _fail(self, failure: ApiFailure) -> ApiFailure:
        outcome = failure_outcome(failure)
        if outcome in ("refused", "empty"):  # the model's answer: it counts (as wrong)
            logger.warning("%s: %s answer, counted as wrong: %s", self.name, outcome,
                           failure.reason)  # fmt: skip
            return failure
        self._usage.add(failures=1)
        logger.warning("%s: item failed: %s", self.name, failure.reason)
        return failure

    def _auth_error(self, result: HttpResult) -> ApiAuthError:
        message = _server_message(result, _json_or_none(result.body))
        variables = " or ".join(KEY_VARIABLES[self.provider])
        return ApiAuthError(f"{self.name}: HTTP {result.status} from {self.base_url}: {message} "
                            f"(check {variables}); the run is stopped")

    def _ensure_model_served(self) -> None:
        """On the first 'not found', ask the server which models it serves (once per model)."""
        with self._served_lock:
            if not self._served_checked:
                self._served_checked = True
                self._not_served = self._check_model_list()
        if self._not_served is not None:
            raise self._not_served

    def _check_model_list(self) -> ApiModelNotFound | None:
        request = self._adapter.models_request()
        headers = {"Accept": "application/json", "User-Agent": "vlmclf", **request.headers,
                   **self._adapter.auth_headers(self._key)}
        result = send("GET", request.url, headers, None, self.timeout_s)
        if result.status in AUTH_STATUS:
            raise self._auth_error(result)
        try:
            names = self._adapter.parse_model_list(result.json()) if result.status == 200 else None
        except (ValueError, MalformedResponse, TypeError, KeyError):
            names = None
        if names is None and result.status == 404:
            return ApiModelNotFound(
                f"{self.base_url} answers 404 both for {self.model} and for its model list: "
                "is the base URL right? (OpenAI-compatible servers usually end in /v1)")
        if names is None:
            logger.info("%s: could not list the models of %s (HTTP %s)", self.name,
                        self.base_url, result.status)
            return None
        if any(self._adapter.same_model(name) for name in names):
            return None
        shown = ", ".join(sorted(names)[:50]) + (f" ... ({len(names) - 50} more)"
                                                 if len(names) > 50 else "")
        return ApiModelNotFound(f"model {self.model} is not served by {self.base_url}; "
                                f"it lists: {redact(shown) or '(nothing)'}")

    def _to_answer(self, value: dict[str, Any]) -> ApiAnswer:
        meta = {name: value[name] for name in ("finish_reason", "truncated", "input_tokens",
                                                "output_tokens", "cached", "attempts")}
        return ApiAnswer(value["text"], meta)


def _finish(value: Any, finish: Callable[[dict[str, Any]], Any]) -> Any:
    return finish(value) if isinstance(value, dict) else value


def _server_message(result: HttpResult, payload: Any) -> str:
    """The server's error message, keys masked, cut short (masked before cutting)."""
    return redact(error_message(payload, result.text_snippet(2000)))[:300]


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except ValueError:
        return None


def _check_settings(concurrency: int, max_requests: int | None, max_cost_usd: float | None,
                    timeout_s: float, image_max_side: int | None, top_logprobs: int) -> None:
    problems = []
    if concurrency < 1:
        problems.append(f"concurrency must be at least 1, got {concurrency}")
    if max_requests is not None and max_requests < 1:
        problems.append(f"max_requests must be at least 1, got {max_requests}")
    if max_cost_usd is not None and not max_cost_usd > 0:
        problems.append(f"max_cost_usd must be positive, got {max_cost_usd}")
    if not timeout_s > 0:
        problems.append(f"timeout_s must be positive, got {timeout_s}")
    if image_max_side is not None and image_max_side < 1:
        problems.append(f"image_max_side must be at least 1, got {image_max_side}")
    if top_logprobs < 1:
        problems.append(f"top_logprobs must be at least 1, got {top_logprobs}")
    if problems:
        raise ValueError("; ".join(problems))


__all__ = ["ApiChatModel", "ApiError"]
