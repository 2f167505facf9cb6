"""The one record every method produces and every metric reads.

A Prediction keeps what is needed to recompute every metric later without the model: the raw
text, per-class scores, the offered choices and the matched label. It is a leaf module (no
imports of ours) so that the store, the metrics and the methods can all share it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Prediction:
    """The outcome of classifying one example.

    Class indices refer to the run's class-name list. ``scores`` (when present) is aligned with
    that list, higher is better; a class that was not scored (not among the offered choices)
    holds ``None``. ``hit`` is the paper's containment rule; ``pred`` the one matched label.
    """

    example_id: str
    label: int
    ok: bool = True
    error: str | None = None
    text: str | None = None
    scores: list[float | None] | None = None
    choices: list[int] | None = None
    pred: int | None = None
    hit: bool | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def failed(cls, example_id: str, label: int, reason: str) -> Prediction:
        """A record for an example that could not be classified (bad image, model error)."""
        return cls(example_id=example_id, label=label, ok=False, error=reason)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Prediction:
        return cls(**json.loads(text))
