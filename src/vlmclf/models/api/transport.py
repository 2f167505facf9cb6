"""HTTP for the API clients: one POST or GET with a timeout, and the retry policy around it.

Only the standard library: ``urllib.request`` with redirects refused (a redirect would carry the
key's header to another host) and the environment's proxy settings honoured.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504, 529})
AUTH_STATUS = frozenset({401, 403})


@dataclass(frozen=True)
class HttpResult:
    """What came back: a status (0 when nothing came back), the body and the headers."""

    status: int
    body: bytes
    headers: dict[str, str]
    error: str | None = None  # transport failure (timeout, refused, reset) when status == 0

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    def text_snippet(self, limit: int = 300) -> str:
        return self.body[:limit].decode("utf-8", "replace").replace("\n", " ")


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        return None  # the 3xx reaches the caller as an HTTPError


_opener = urllib.request.build_opener(_RefuseRedirects())


def send(method: str, url: str, headers: dict[str, str], body: bytes | None,
         timeout_s: float) -> HttpResult:
    """One HTTP exchange. Transport failures come back as status 0, never as exceptions."""
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with _opener.open(request, timeout=timeout_s) as response:
            return HttpResult(response.status, response.read(), _lower(response.headers))
    except urllib.error.HTTPError as err:
        try:
            payload = err.read()
        except (OSError, http.client.HTTPException):
            payload = b""
        return HttpResult(err.code, payload, _lower(err.headers))
    except urllib.error.URLError as err:
        if isinstance(err.reason, TimeoutError):
            return HttpResult(0, b"", {}, error=f"timed out after {timeout_s:g} s")
        return HttpResult(0, b"", {}, error=f"connection failed: {err.reason}")
    except TimeoutError:
        return HttpResult(0, b"", {}, error=f"timed out after {timeout_s:g} s")
    except (OSError, http.client.HTTPException) as err:
        return HttpResult(0, b"", {}, error=f"connection failed: {type(err).__name__}: {err}")


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()} if headers is not None else {}


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded; Retry-After wins when the server sends it.

    ``max_retries`` is the number of retries after the first attempt. A Retry-After longer than
    ``max_retry_after_s`` ends the item instead of stalling the run for hours.
    """

    max_retries: int = 6
    base_s: float = 1.0
    cap_s: float = 60.0
    max_retry_after_s: float = 300.0
    seed: int | None = None

    def backoff(self, retry_number: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**n)] for the n-th retry (0-based)."""
        return rng.uniform(0.0, min(self.cap_s, self.base_s * (2.0**retry_number)))


def retry_after_seconds(headers: dict[str, str], now: float | None = None) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, or Retry-After (seconds or date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def interruptible_sleep(seconds: float, stop: threading.Event) -> bool:
    """Sleep unless the run is stopping; True when the sleep was cut short."""
    return stop.wait(seconds)
