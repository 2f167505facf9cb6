"""The one record every method produces and every metric reads.

A Prediction keeps what is needed to recompute every metric later without the model: the raw
text, per-class scores, the offered choices and the matched label. It is a leaf module (no
imports of ours) so that the store, the metrics and the methods can all share it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

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


OUTCOME_CODES: dict[str, int] = {name: i for i, name in enumerate(OUTCOMES)}
FLAG_CODES: dict[str | None, int] = {None: -1, **{f: i for i, f in enumerate(ANSWER_FLAGS)}}


@dataclass
class PredictionColumns:
    """Predictions (a chunk of a run, or a whole run without scores) as numpy columns.

    What metrics read, without one Python object per row: ``outcome`` holds indices into
    ``OUTCOMES``, ``flag`` into ``ANSWER_FLAGS`` (-1: none), ``pred`` -1 for no prediction,
    ``hit`` -1 for "not judged by containment". ``scores`` (rows x classes, float64, NaN where a
    class was not scored or the row has no scores) is present only when it was asked for;
    ``has_scores`` says which rows had a scores list.
    """

    example_id: np.ndarray
    label: np.ndarray
    ok: np.ndarray
    outcome: np.ndarray
    flag: np.ndarray
    pred: np.ndarray
    hit: np.ndarray
    has_scores: np.ndarray
    scores: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.label)

    def take(self, rows: np.ndarray) -> PredictionColumns:
        """The rows selected by a boolean mask or index array, in their order."""
        return PredictionColumns(
            **{name: (None if value is None else value[rows]) for name, value in self._items()}
        )

    def _items(self) -> list[tuple[str, np.ndarray | None]]:
        return [(f, getattr(self, f)) for f in self.__dataclass_fields__]

    @classmethod
    def concat(cls, parts: list[PredictionColumns], n_classes: int = 0) -> PredictionColumns:
        """One PredictionColumns from consecutive chunks (an empty list gives zero rows)."""
        if not parts:
            return cls.from_predictions([], n_classes, with_scores=False)
        with_scores = all(p.scores is not None for p in parts)
        return cls(
            **{
                f: (np.concatenate([getattr(p, f) for p in parts]) if f != "scores" or with_scores
                    else None)
                for f in cls.__dataclass_fields__
            }
        )  # fmt: skip

    @classmethod
    def from_predictions(
        cls, preds: list[Prediction], n_classes: int, with_scores: bool = True
    ) -> PredictionColumns:
        """The columns of Prediction objects (a chunk); scores None -> NaN."""
        n = len(preds)
        scores = None
        if with_scores:
            scores = np.full((n, n_classes), np.nan)
            for i, p in enumerate(preds):
                if p.scores is not None:
                    if len(p.scores) != n_classes:
                        raise ValueError(
                            f"prediction {p.example_id!r}: {len(p.scores)} scores for "
                            f"{n_classes} classes"
                        )
                    scores[i] = np.array(p.scores, dtype=np.float64)
        return cls(
            example_id=np.array([p.example_id for p in preds], dtype=object),
            label=np.array([p.label for p in preds], dtype=np.int64),
            ok=np.array([p.ok for p in preds], dtype=bool),
            outcome=np.array([OUTCOME_CODES[p.outcome] for p in preds], dtype=np.int8),
            flag=np.array([FLAG_CODES[p.flag] for p in preds], dtype=np.int8),
            pred=np.array([-1 if p.pred is None else p.pred for p in preds], dtype=np.int64),
            hit=np.array([-1 if p.hit is None else int(p.hit) for p in preds], dtype=np.int8),
            has_scores=np.array([p.scores is not None for p in preds], dtype=bool),
            scores=scores,
        )
