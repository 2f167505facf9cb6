"""The one record every method produces and every metric reads.

A Prediction keeps what is needed to recompute every metric later without the model: the raw
text, per-class scores, the offered choices and the matched label. It is a leaf module (no
imports of ours) so that the store, the metrics and the methods can all share it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Outcome = Literal["answer", "data_failure", "transient_failure"]
"""What became of one example. An *answer* is the model's (even empty, refused or truncated) and
counts in every headline; a *data failure* (the image cannot be read) is the dataset's: shown
apart, and wrong in ``accuracy_all``; a *transient failure* (retries exhausted, timeout,
out-of-memory, a model runtime error) is the machine's: not done, retried by the next run."""
OUTCOMES: tuple[str, ...] = ("answer", "data_failure", "transient_failure")
AnswerFlag = Literal["empty", "refused", "truncated"]
"""What was odd about an answer that still counts: no text, a refusal/block, the token limit."""
ANSWER_FLAGS: tuple[str, ...] = ("empty", "refused", "truncated")


@dataclass
class Prediction:
    """The outcome of classifying one example.

    Class indices refer to the run's class-name list. ``scores`` (when present) is aligned with
    that list, higher is better; a class that was not scored (not among the offered choices)
    holds ``None``. ``hit`` is the paper's containment rule; ``pred`` the one matched label.
    ``ok`` is True exactly for answers; ``outcome`` says which kind of failure the others are,
    ``flag`` what was odd about an answer (see ``Outcome`` and ``AnswerFlag``).
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
    outcome: Outcome = "answer"
    flag: AnswerFlag | None = None

    def __post_init__(self) -> None:
        # ok and outcome say one thing: a record built the old way (ok=False) is a data failure
        if self.outcome != "answer":
            self.ok = False
        elif not self.ok:
            self.outcome = "data_failure"

    @classmethod
    def failed(
        cls, example_id: str, label: int, reason: str, outcome: Outcome = "data_failure"
    ) -> Prediction:
        """A record for an example that got no answer: unreadable data, or (``outcome=
        "transient_failure"``) a machine fault that the next run retries."""
        if outcome == "answer":
            raise ValueError("a failed prediction needs a failure outcome, not 'answer'")
        return cls(example_id=example_id, label=label, ok=False, error=reason, outcome=outcome)

    @classmethod
    def transient(cls, example_id: str, label: int, reason: str) -> Prediction:
        """A failure of the machine, not of the data or the model: retried on the next run."""
        return cls.failed(example_id, label, reason, "transient_failure")

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Prediction:
        return cls(**json.loads(text))
