"""Turning what a model returned for one example into a Prediction of the right outcome kind.

An empty, refused (blocked) or truncated answer is still the model's answer: it is recorded as
an answer (``ok=True``) with a ``flag`` and counts as wrong. Only a failure of the input or of the
machine is a failure, and only the machine's is retried (see ``records.Outcome``).
"""

from __future__ import annotations

from vlmclf.records import AnswerFlag, Prediction


def flag_of_text(answer: str) -> AnswerFlag | None:
    """``empty`` for no text, ``truncated`` when the provider says the token limit cut it."""
    if not answer.strip():
        return "empty"
    meta = getattr(answer, "meta", None) or {}
    return "truncated" if meta.get("truncated") else None


def record_without_text(
    example_id: str, label: int, returned: object, choices: list[int] | None = None
) -> Prediction:
    """The record for a non-text result: an API refusal/empty answer (a wrong answer), an
    input the server rejected (data failure), or anything else (transient: retried)."""
    from vlmclf.models.api.errors import ApiFailure, failure_outcome

    reason = str(returned) if returned is not None else "no answer received"
    kind = failure_outcome(returned) if isinstance(returned, ApiFailure) else "transient_failure"
    if kind in ("refused", "empty"):
        return Prediction(
            example_id=example_id, label=label, text="", choices=choices, pred=None, hit=False,
            flag=kind, extra={"note": reason},
        )  # fmt: skip
    failed = Prediction.failed(example_id, label, reason, kind)
    failed.choices = choices
    return failed
