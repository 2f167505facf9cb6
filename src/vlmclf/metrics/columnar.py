"""The metrics of ``metrics.classification`` on numpy columns, for runs too large for one
Prediction object per row.

``summarize_columns`` gives exactly the numbers of ``metrics.summarize`` (same conventions:
classes are names, every answer counts, no evidence is None, two correctness rules; see that
module) from ``PredictionColumns`` chunks, e.g. ``RunStore.column_chunks``. Scores are ranked
chunk by chunk and dropped; what is kept for the whole run is a few bytes per row. Per-class
figures loop over classes, never over rows, and add up in the same order as
``metrics.classification``, so floats agree to the bit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from vlmclf.metrics.classification import (
    Rule,
    bootstrap_ci,
    canonical_indices,
    denominator_text,
    topk_hits_matrix,
)
from vlmclf.records import FLAG_CODES, OUTCOME_CODES, PredictionColumns

_EMPTY, _REFUSED, _TRUNCATED = FLAG_CODES["empty"], FLAG_CODES["refused"], FLAG_CODES["truncated"]


def _checked_canon(cols: PredictionColumns, canon: np.ndarray, field: str) -> np.ndarray:
    """Canonical indices of ``cols.<field>`` for answered rows (-1 where pred is missing)."""
    values = getattr(cols, field)
    answered = cols.ok & (values >= 0) if field == "pred" else cols.ok
    bad = answered & ((values < 0) | (values >= len(canon)))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"prediction {cols.example_id[i]!r}: {field}={int(values[i])} is outside the "
            f"{len(canon)} classes"
        )
    out = np.full(len(values), -1, dtype=np.int64)
    out[answered] = canon[values[answered]]
    return out


def correctness_columns(
    cols: PredictionColumns, class_names: Sequence[str], rule: Rule = "contain"
) -> np.ndarray:
    """Per answered row (in order): correct under ``rule``? (``metrics.correctness``)"""
    if rule not in ("strict", "contain"):
        raise ValueError(f"rule must be 'strict' or 'contain', not {rule!r}")
    canon = np.asarray(canonical_indices(class_names), dtype=np.int64)
    label = _checked_canon(cols, canon, "label")
    pred = _checked_canon(cols, canon, "pred")
    strict = (pred >= 0) & (pred == label)
    correct = np.where(cols.hit >= 0, cols.hit == 1, strict) if rule == "contain" else strict
    return correct[cols.ok]


def per_class_accuracy_columns(
    cols: PredictionColumns, class_names: Sequence[str], rule: Rule = "strict"
) -> dict[str, float]:
    """``metrics.per_class_accuracy`` on columns."""
    canon = np.asarray(canonical_indices(class_names), dtype=np.int64)
    correct = correctness_columns(cols, class_names, rule)
    labels = canon[cols.label[cols.ok]]
    total = np.bincount(labels, minlength=len(canon))
    right = np.bincount(labels, weights=correct, minlength=len(canon))
    return {class_names[c]: int(right[c]) / int(total[c]) for c in np.flatnonzero(total)}


def _precision_recall_f1(
    cols: PredictionColumns, class_names: Sequence[str]
) -> dict[str, float | None]:
    """Macro P/R/F1 of ``metrics.precision_recall_f1`` (per-class values left out)."""
    canon = np.asarray(canonical_indices(class_names), dtype=np.int64)
    label = _checked_canon(cols, canon, "label")[cols.ok]
    pred = _checked_canon(cols, canon, "pred")[cols.ok]
    support = np.bincount(label, minlength=len(canon))
    predicted = np.bincount(pred[pred >= 0], minlength=len(canon))
    true_pos = np.bincount(label[(pred >= 0) & (pred == label)], minlength=len(canon))
    values: dict[str, list[float]] = {"precision": [], "recall": [], "f1": []}
    for c in np.flatnonzero((support > 0) | (predicted > 0)):
        tp, n_pred, n_true = int(true_pos[c]), int(predicted[c]), int(support[c])
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true if n_true else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        values["precision"].append(precision)
        values["recall"].append(recall)
        values["f1"].append(f1)
    return {
        f"macro_{key}": (sum(v) / len(v) if v else None) for key, v in values.items()
    }


def _outcome_counts(cols: PredictionColumns) -> dict[str, int]:
    flags = cols.flag[cols.ok]
    unparsed = cols.ok & (cols.pred < 0) & (cols.flag != _EMPTY) & (cols.flag != _REFUSED)
    return {
        "n_answers": int(cols.ok.sum()),
        "n_empty": int((flags == _EMPTY).sum()),
        "n_refused": int((flags == _REFUSED).sum()),
        "n_truncated": int((flags == _TRUNCATED).sum()),
        "n_unparsed": int(unparsed.sum()),
        "n_data_failed": int((cols.outcome == OUTCOME_CODES["data_failure"]).sum()),
        "n_transient": int((cols.outcome == OUTCOME_CODES["transient_failure"]).sum()),
    }


def _mean(flags: np.ndarray) -> float | None:
    return int(flags.sum()) / len(flags) if len(flags) else None


def topk_hits_columns(
    chunk: PredictionColumns, class_names: Sequence[str], k: int = 5
) -> np.ndarray:
    """Per row of the chunk that is answered and scored: is its label in the top k?"""
    if chunk.scores is None:
        raise ValueError("top-k needs the chunk's scores (read them with scores=True)")
    canon_list = canonical_indices(class_names)
    canon = np.asarray(canon_list, dtype=np.int64)
    rows = chunk.ok & chunk.has_scores
    if not rows.any():
        return np.zeros(0, dtype=bool)
    label = _checked_canon(chunk, canon, "label")[rows]
    return topk_hits_matrix(chunk.scores[rows].copy(), label, canon_list, k)


def summarize_columns(
    chunks: Iterable[PredictionColumns], class_names: Sequence[str], seed: int = 0
) -> dict[str, Any]:
    """``metrics.summarize`` from column chunks (each with scores), holding no score matrix
    beyond one chunk."""
    parts, top5 = [], []
    for chunk in chunks:
        top5.append(topk_hits_columns(chunk, class_names, k=5))
        chunk.scores = None  # ranked: drop the chunk's matrix
        parts.append(chunk)
    return summarize_ranked(PredictionColumns.concat(parts), np.concatenate(top5 or [[]]),
                            class_names, seed)  # fmt: skip


def summarize_ranked(
    cols: PredictionColumns, top5: np.ndarray, class_names: Sequence[str], seed: int = 0
) -> dict[str, Any]:
    """The summary of a whole run's columns, given each scored answer's top-5 hit."""
    contain = correctness_columns(cols, class_names, "contain")
    strict = correctness_columns(cols, class_names, "strict")
    n = len(cols)
    kinds = _outcome_counts(cols)
    per_class = per_class_accuracy_columns(cols, class_names)
    prf = _precision_recall_f1(cols, class_names)
    return {
        "n": n,
        "n_ok": len(contain),
        "n_failed": n - len(contain),
        **kinds,
        "provisional": kinds["n_transient"] > 0,
        "denominator": denominator_text(kinds, n),
        "n_no_pred": int((cols.ok & (cols.pred < 0)).sum()),
        "n_scored": int((cols.ok & cols.has_scores).sum()),
        "n_classes": len(set(class_names)),
        "accuracy": _mean(contain),
        "accuracy_all": int(contain.sum()) / n if n else None,
        "strict_accuracy": _mean(strict),
        "strict_accuracy_all": int(strict.sum()) / n if n else None,
        "top5": _mean(np.asarray(top5, dtype=bool)),
        "balanced_accuracy": sum(per_class.values()) / len(per_class) if per_class else None,
        **prf,
        "ci95": list(bootstrap_ci(contain, seed=seed)) if len(contain) else None,
        "strict_ci95": list(bootstrap_ci(strict, seed=seed)) if len(strict) else None,
    }
