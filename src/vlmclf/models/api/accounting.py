"""Usage, cost and the caps on both, shared by all worker threads of one model."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from vlmclf.models.api.errors import ApiBudgetExceeded
from vlmclf.models.api.prices import Price


@dataclass
class Usage:
    """Counters for one model object (one run). Each response is counted exactly once.

    ``requests`` counts HTTP requests sent, retries included; ``cached_hits`` items answered
    from the response cache (or by an identical item in the same batch); tokens and cost cover
    only responses received in this process, since cached ones were paid for before.
    """

    price: Price | None
    max_requests: int | None = None
    max_cost_usd: float | None = None
    requests: int = 0
    cached_hits: int = 0
    answered: int = 0
    failures: int = 0
    retries: int = 0
    malformed: int = 0
    truncated: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    responses_without_usage: int = 0
    implausible_input_tokens: int = 0  # answers whose input count cannot cover image + question
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def cost_usd(self) -> float | None:
        if self.price is None:
            return None
        return self.price.cost(self.input_tokens, self.output_tokens)

    def reserve_request(self, where: str) -> None:
        """Count one request about to be sent, or raise ApiBudgetExceeded if a cap is reached."""
        with self._lock:
            problem = self._cap_reached()
            if problem is None:
                self.requests += 1
                return
            cost = self.cost_usd
        raise ApiBudgetExceeded(
            f"{problem}; {self.requests} requests sent, estimated cost "
            f"{_money(cost)} so far. Every answer received is stored in {where}: raise the cap "
            "and run again to continue without paying twice.",
            requests=self.requests, max_requests=self.max_requests, cost_usd=cost,
            max_cost_usd=self.max_cost_usd,
        )

    def _cap_reached(self) -> str | None:
        if self.max_requests is not None and self.requests >= self.max_requests:
            return f"request cap reached (max_requests={self.max_requests})"
        cost = self.cost_usd
        if self.max_cost_usd is not None and cost is not None and cost >= self.max_cost_usd:
            return f"spend cap reached (max_cost_usd={self.max_cost_usd:g})"
        return None

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests, "cached_hits": self.cached_hits,
                "answered": self.answered, "failures": self.failures, "retries": self.retries,
                "malformed": self.malformed, "truncated": self.truncated,
                "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "responses_without_usage": self.responses_without_usage,
                "implausible_input_tokens": self.implausible_input_tokens,
                "estimated_cost_usd": self.cost_usd,
                "max_requests": self.max_requests, "max_cost_usd": self.max_cost_usd,
            }


def _money(cost: float | None) -> str:
    return "unknown (no price for this model)" if cost is None else f"${cost:.4f}"
